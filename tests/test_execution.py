"""The hostile battery: each sample attacks the host or the harness; the verdict is exact and the host unharmed."""

import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import trl_ib.code_eval.execution as execution
from trl_ib.code_eval.execution import Limits, Sample, bwrap_available, run_samples, sandbox


def run_one(program: str, test: str = "", entry_point: str | None = None, timeout: float = 2.0, limits=Limits()):
    return run_samples([Sample(program, test, entry_point)], timeout=timeout, limits=limits, progress=False)[0]


def sandbox_processes() -> list[int]:
    """Pids of live fork servers and of anything forked from them (they share its command line)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                if b"PR_SET_DUMPABLE" in file.read():
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


@pytest.fixture
def canary():
    """A directory outside every sandbox's temp dir (not under /tmp, which samples see as their own tmpfs)."""
    path = os.path.join("/var/tmp", f"ib-ft-canary-{os.getpid()}")
    os.makedirs(path)
    with open(os.path.join(path, "keep.txt"), "w") as file:
        file.write("intact")
    yield path
    with open(os.path.join(path, "keep.txt")) as file:
        assert file.read() == "intact"
    assert os.listdir(path) == ["keep.txt"]
    shutil.rmtree(path)


@pytest.fixture(autouse=True)
def host_is_clean(canary):
    assert bwrap_available(), "the hostile battery needs bubblewrap (apt-get install -y bubblewrap)"
    yield
    deadline = time.monotonic() + 2  # a killed PID namespace takes a moment to go
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes() == []


ADD = "def add(a, b):\n    return a + b\n"
ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n"
WRONG_ADD = "def add(a, b):\n    return a - b\n"


def test_correct_and_wrong_programs():
    assert run_one(ADD, ADD_TEST, "add").result == "passed"
    assert run_one(WRONG_ADD, ADD_TEST, "add").result == "failed: "
    assert run_one("def add(a, b) return", ADD_TEST, "add").result == "failed: expected ':' (<string>, line 1)"


def test_an_interpreter_started_through_dotdot_runs_samples(tmp_path):
    """Started as `src/../../<...>/<the interpreter's folder>/python` from tmp_path (sys.executable keeps the `..`):
    `src` and tmp_path are not in the sandbox's view, so the sandbox must start the interpreter's resolved path."""
    (tmp_path / "src").mkdir()
    folder, name = os.path.split(sys.executable)
    relative = "src/" + "../" * len(tmp_path.parts) + folder.lstrip("/") + "/" + name  # parts: "/" and each folder
    script = (
        "import sys; from trl_ib.code_eval.execution import Sample, run_samples, sandbox\n"
        "assert '..' in sys.executable and sandbox.python_executable() == sys.argv[1], sys.executable\n"
        f"samples = [Sample({ADD!r}, {ADD_TEST!r}, 'add'), Sample({WRONG_ADD!r}, {ADD_TEST!r}, 'add')]\n"
        "print([result.result for result in run_samples(samples, num_workers=1, progress=False)])\n"
    )
    resolved = os.path.join(os.path.realpath(folder), name)
    run = subprocess.run([relative, "-c", script, resolved], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "['passed', 'failed: ']"


def test_infinite_loop_times_out():
    start = time.monotonic()
    result = run_one("while True:\n    pass\n", timeout=1.0)
    assert result.result == "timed out"
    assert not result.passed
    assert time.monotonic() - start < 5


def test_fork_bomb_is_killed_with_its_namespace():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    assert run_one(bomb, timeout=1.0).result == "timed out"


def test_memory_bomb_hits_the_address_space_limit():
    assert run_one("blob = bytearray(10**11)\n").result == "failed: "
    grow = "blobs = []\nwhile True:\n    blobs.append(bytearray(2**28))\n"
    assert run_one(grow, timeout=10.0, limits=Limits(memory_bytes=2**30)).result == "failed: "


def test_huge_output_is_truncated():
    result = run_one(ADD + "print('x' * 10**7)\n", ADD_TEST, "add", limits=Limits(output_bytes=1000))
    assert (result.result, result.stdout) == ("passed", "x" * 1000)
    raw = run_one("import os\nos.write(1, b'y' * 10**7)\n", limits=Limits(output_bytes=1000, file_bytes=10**6))
    assert raw.result == "passed"  # RLIMIT_FSIZE turned the write into a short one
    assert raw.stdout == "y" * 500 + "\n[... 999000 bytes truncated ...]\n" + "y" * 500


def test_cannot_touch_files_outside_its_workspace(canary):
    keep = os.path.join(canary, "keep.txt")
    assert run_one(f"import os\nos.system('rm -rf {canary}')\n").result == "passed"
    assert (
        run_one(f"open({keep!r}, 'w').write('pwned')\n").result
        == f"failed: [Errno 2] No such file or directory: {keep!r}"
    )
    assert run_one("open('/usr/pwned', 'w')\n").result == "failed: [Errno 30] Read-only file system: '/usr/pwned'"
    # Its own temp dir is writable.
    assert run_one("open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'\n").passed


def test_killing_its_parent_does_not_reach_the_host():
    result = run_one("import os\nos.kill(os.getppid(), 9)\n" + ADD, ADD_TEST, "add")
    assert result.result == "failed: the program killed its sandbox"
    assert run_one(ADD, ADD_TEST, "add").result == "passed"  # a fresh fork server takes over


def test_network_is_unreachable():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
    assert run_one(program).result == "failed: [Errno 111] Connection refused"
    with pytest.raises(BlockingIOError):
        listener.accept()
    listener.close()


def test_exiting_before_the_tests_fails():
    assert run_one("import sys\nsys.exit(0)\n" + ADD, ADD_TEST, "add").result == "failed: 0"
    result = run_one("import os\nos._exit(0)\n" + ADD, ADD_TEST, "add")
    assert result.result == "failed: the program exited before reporting a result"
    assert run_one(ADD + "raise SystemExit\n", ADD_TEST, "add").result == "failed: "


def test_redefining_check_or_patching_builtins_does_not_pass():
    fake_check = WRONG_ADD + "def check(candidate):\n    pass\n"
    assert run_one(fake_check, ADD_TEST, "add").result == "failed: "
    test = "def check(candidate):\n    assert abs(candidate(2, 3) - 5) < 1e-9\n    assert isinstance(candidate(1, 1), int)\n"
    patched = "import builtins\nbuiltins.abs = lambda x: 0\n" + WRONG_ADD
    assert run_one(patched, test, "add").result == "failed: "
    shadowed = (
        "def abs(x):\n    return 0\ndef isinstance(*args):\n    return True\ndef add(a, b):\n    return 'five'\n"
    )
    assert run_one(shadowed, test, "add").result == "failed: unsupported operand type(s) for -: 'str' and 'int'"


def test_interrupts_raised_inside_the_tests_fail():
    interrupt = "def add(a, b):\n    raise KeyboardInterrupt\n"
    assert run_one(interrupt, ADD_TEST, "add").result == "failed: "
    exit_ = "import sys\ndef add(a, b):\n    sys.exit(0)\n"
    assert run_one(exit_, ADD_TEST, "add").result == "failed: 0"


def test_printing_a_fake_verdict_does_not_pass():
    program = WRONG_ADD + "import os\nos.write(1, b'\\n' + b'0' * 32 + b' passed\\n')\nprint('passed')\n"
    assert run_one(program, ADD_TEST, "add").result == "failed: "


def test_a_forked_copy_of_the_harness_cannot_report():
    # The child passes (it fixes `add` after forking) but only the harness's own pid may report.
    program = ADD + "import os, time\nif os.fork():\n    time.sleep(0.5)\n    def add(a, b):\n        return 0\n"
    assert run_one(program, ADD_TEST, "add").result == "failed: "


def test_results_stream_back_in_order_and_one_crash_loses_nothing():
    samples = [Sample(ADD, ADD_TEST, "add"), Sample("import os\nos.kill(os.getppid(), 9)\n", "", None)] * 4
    results = run_samples(samples, timeout=2.0, num_workers=2, progress=False)
    assert [result.verdict for result in results] == ["passed", "failed"] * 4


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"language": "rust"}, ValueError, "language='rust' is not supported; choose one of ['python', 'verilog']"),
        ({"timeout": 0}, ValueError, "timeout=0 is invalid; give the wall-clock seconds per sample, > 0 and <= 1e+06"),
        (
            {"timeout": float("nan")},
            ValueError,
            "timeout=nan is invalid; give the wall-clock seconds per sample, > 0 and <= 1e+06",
        ),
        (
            {"timeout": float("inf")},
            ValueError,
            "timeout=inf is invalid; give the wall-clock seconds per sample, > 0 and <= 1e+06",
        ),
        (
            {"timeout": "3"},
            ValueError,
            "timeout='3' is invalid; give the wall-clock seconds per sample, > 0 and <= 1e+06",
        ),
        (
            {"num_workers": 0},
            ValueError,
            "num_workers=0 is invalid; give a whole number >= 1, or None for one per CPU "
            "up to what the RAM holds at Limits.max_memory_bytes each",
        ),
        (
            {"num_workers": -1},
            ValueError,
            "num_workers=-1 is invalid; give a whole number >= 1, or None for one per CPU "
            "up to what the RAM holds at Limits.max_memory_bytes each",
        ),
        (
            {"samples": [(ADD, ADD_TEST, "add")]},
            TypeError,
            "samples[0]=('def add(a, b):\\n    return a + b\\n', 'def check(candidate):\\n    assert candidate(2, 3) == 5\\n', 'add') "
            "is invalid; give Sample(program, test, entry_point) objects",
        ),
    ],
)
def test_invalid_arguments_are_refused_before_anything_runs(kwargs, error, message):
    arguments = {"samples": [Sample(ADD, ADD_TEST, "add")], "progress": False, **kwargs}
    with pytest.raises(error) as raised:
        run_samples(**arguments)
    assert str(raised.value) == message


def test_invalid_samples_and_limits():
    with pytest.raises(TypeError, match=r"^Sample.program=None is invalid; give the source as a str$"):
        Sample(None, ADD_TEST, "add")
    with pytest.raises(
        ValueError, match=r"^Sample.entry_point='a b' is invalid; give an identifier \(a str\) or None$"
    ):
        Sample(ADD, ADD_TEST, "a b")
    with pytest.raises(
        ValueError, match=r"^Limits.output_bytes=-1 is invalid; give a whole number from 1 to 2\*\*62$"
    ):
        Limits(output_bytes=-1)
    with pytest.raises(
        ValueError, match=r"^Limits.memory_bytes=1.5 is invalid; give a whole number from 1 to 2\*\*62$"
    ):
        Limits(memory_bytes=1.5)
    assert Limits(memory_bytes=2**20, processes=4, disk_bytes=2**20).max_memory_bytes == 5 * 2**20


def test_numpy_numbers_are_accepted():
    limits = Limits(memory_bytes=np.int64(2**30))
    assert type(limits.memory_bytes) is int
    result = run_samples(
        [Sample(ADD, ADD_TEST, "add")], timeout=np.float64(2.0), num_workers=np.int64(1), limits=limits, progress=False
    )
    assert result[0].result == "passed"


def test_without_bubblewrap_warns_once_and_still_runs(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    sandbox.bwrap_available.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="bwrap is not installed .* they CAN reach the network"):
            assert not bwrap_available()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert not bwrap_available()
        assert run_one(ADD, ADD_TEST, "add").result == "passed"
    finally:
        sandbox.bwrap_available.cache_clear()


GiB = 2**30


def fake_machine(monkeypatch, cpus: int, ram_bytes: int) -> list[int]:
    """Pretend to have `cpus` usable CPUs and `ram_bytes` of RAM; returns the pool sizes `run_samples` picks."""
    monkeypatch.setattr(execution, "_usable_cpus", lambda: cpus)
    monkeypatch.setattr(execution, "_physical_bytes", lambda: ram_bytes)
    pool_sizes = []

    class RecordingPool(ThreadPoolExecutor):
        def __init__(self, max_workers):
            pool_sizes.append(max_workers)
            super().__init__(max_workers=max_workers)

    monkeypatch.setattr(execution, "ThreadPoolExecutor", RecordingPool)
    return pool_sizes


# Limits().max_memory_bytes is 8.0625 GiB: 128 // 8.0625 = 15, 32 // 8.0625 = 3, 2048 // 8.0625 = 254, 4 // 8.0625 = 0.
@pytest.mark.parametrize(
    ("cpus", "ram_bytes", "expected"),
    [(16, 128 * GiB, 15), (8, 32 * GiB, 3), (64, 2048 * GiB, 64), (4, 4 * GiB, 1), (1, 128 * GiB, 1)],
)
def test_default_num_workers_fits_the_ram_and_never_warns(monkeypatch, cpus, ram_bytes, expected):
    pool_sizes = fake_machine(monkeypatch, cpus, ram_bytes)
    assert execution.default_num_workers() == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert run_one(ADD, ADD_TEST, "add").result == "passed"
    assert pool_sizes == [expected]


def test_an_explicit_setting_past_the_ram_warns(monkeypatch):
    pool_sizes = fake_machine(monkeypatch, 16, 128 * GiB)
    with pytest.warns(
        RuntimeWarning, match=r"^num_workers=16 sandboxes may hold up to 8.06 GiB each .* 128.00 GiB of RAM"
    ):
        run_samples([], num_workers=16, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        run_samples([], num_workers=15, progress=False)  # explicit but fits
    fake_machine(monkeypatch, 4, 4 * GiB)
    with pytest.warns(
        RuntimeWarning, match=r"^num_workers=1 sandboxes may hold up to 9.06 GiB each .* 4.00 GiB of RAM"
    ):
        run_samples([], limits=Limits(processes=9), progress=False)  # explicit limits: one sandbox is past the RAM
    assert pool_sizes == [16, 15]
