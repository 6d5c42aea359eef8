"""Verilog backend: Icarus Verilog, VerilogEval layout.

A problem's `test` holds the testbench and the reference module; the testbench compares the candidate
(`TopModule`/`top_module`) with the reference and ends with `$display("Mismatches: %1d in %1d samples", ...)`.
A sample passes when that line reports zero mismatches.

One sandbox per sample (see `sandbox.py`) runs `_verilog_driver.py` with the interpreter of this process: it writes
design.sv and testbench.sv into the sandbox's private tmpfs and preprocesses the design alone (`iverilog -E`),
so its `ifdef`s cannot see the testbench's macros (VerilogEval v2 testbenches `define OK); that text is all
the later steps see of the design. It refuses a preprocessed design that still holds a directive other than
`timescale/`default_nettype/`resetall/`celldefine (a macro can paste an `ifdef together) or that calls
`$finish`, `$stop`, `$fatal` or `$exit*` outside comments and strings: VerilogEval v2 testbenches report in a
`final` block, which runs on any `$finish`, so a design that ends the run early would report on the samples
compared so far. It compiles testbench and design together (`iverilog -g2012 [-s <entry_point>] -o sim.vvp
testbench.sv design.sv`), checks that the design stands alone (`iverilog -t null design.sv` elaborates it
without the testbench: hierarchical or upward references into the testbench such as `tb.good1.out`,
`good1.out` or `tb.errors`, or an instance of its `RefModule`, fail here), deletes both sources, moves the
compiled program into a traverse-only folder with a random name and execs `vvp -n` on it. The testbench's
format string is prefixed with a random per-sample nonce, which then exists only in vvp's memory and in that
unlisted file: the design cannot read sources, the compiled program or its own output (stdout is a
write-only, append-only host file and there is no /proc), so it can neither learn the nonce nor overwrite
the report. A sample passes only if the simulation exits with status 0 within the timeout and its stdout
holds exactly one `<nonce> Mismatches: 0 in N samples` line with N > 0 ("0 in 0 samples": nothing was
compared). The backend does not know the testbench's full sample count: a testbench that ends early by
itself would pass a design on the samples it compared.
"""

import marshal
import re
import secrets
import threading
from importlib import resources

from . import sandbox

_MISMATCH_FORMAT = '"Mismatches: '

# The driver script, handed to the sandboxed interpreter as `-c` text (it cannot import trl_ib there).
_DRIVER = resources.files(__package__).joinpath("_verilog_driver.py").read_text(encoding="utf-8")


_PROBE_DESIGN = "module TopModule(output out);\n  assign out = 1;\nendmodule\n"
_PROBE_TEST = 'module tb;\n  wire out;\n  TopModule dut(.out(out));\n  initial $display("Mismatches: %1d in %1d samples", out !== 1, 1);\nendmodule\n'


_probe_lock = threading.Lock()
_probe_outcome: list = []  # empty until probed; then [None] (passed) or [the SandboxError it raised]


def check_sandbox() -> None:
    """Run a known-good design once per process; raise `sandbox.SandboxError` when it does not pass.

    Every Verilog verdict comes from the driver, so a sandbox that cannot start it would fail every design
    ("exited with status 1") and score 0 without a word. Worker threads that call it at once wait for the
    one probe (~30 s at worst); a failure is remembered and raised again to every later caller unprobed.
    `check_sandbox.cache_clear()` forgets the outcome.
    """
    with _probe_lock:
        if not _probe_outcome:
            probe = _run(_PROBE_DESIGN, _PROBE_TEST, "tb", 30.0, sandbox.Limits())
            _probe_outcome.append(
                None
                if probe.passed
                else sandbox.SandboxError(
                    f"the Verilog sandbox cannot run a known-good design: {probe.result}; {probe.stderr[-2000:]}"
                )
            )
        error = _probe_outcome[0]
    if error is not None:
        raise sandbox.SandboxError(*error.args)


def _forget_probe() -> None:
    with _probe_lock:
        _probe_outcome.clear()


check_sandbox.cache_clear = _forget_probe


class IcarusVerilog:
    """The Verilog backend for one `run_samples` call: `run_sample` with a fresh sandbox per sample (no state to
    free, so entering and leaving it do nothing)."""

    def __enter__(self) -> "IcarusVerilog":
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def run_sample(self, program: str, test: str, entry_point: str | None, timeout: float, limits: sandbox.Limits):
        """Compile `program` with the testbench `test` and simulate it.

        Args:
            program: the candidate design source.
            test: testbench + reference module; must print `"Mismatches: %1d in %1d samples"`.
            entry_point: the testbench's top module (`iverilog -s`), or None to let iverilog pick the roots.
            timeout: wall-clock seconds for compilation and simulation together.
            limits: rlimits, tmpfs size and output truncation.

        Returns:
            `sandbox.ExecutionResult`; "failed: compile error: ..." when iverilog rejects the design,
            "failed: the design does not stand alone: ..." when it only elaborates with the testbench around it,
            and "failed: N mismatches in M samples" when the simulation disagrees with the reference.

        Raises:
            sandbox.SandboxError: the sandbox cannot run a known-good design here (checked once per process).
        """
        check_sandbox()
        return _run(program, test, entry_point, timeout, limits)


def _run(program: str, test: str, entry_point: str | None, timeout: float, limits: sandbox.Limits):
    tools = [sandbox.find_tool("iverilog", "iverilog"), sandbox.find_tool("vvp", "iverilog")]
    if _MISMATCH_FORMAT not in test:
        raise ValueError(
            f'test does not print {_MISMATCH_FORMAT}%1d in %1d samples"; Verilog tests must be '
            "VerilogEval testbenches that report their mismatch count"
        )
    nonce = secrets.token_hex(16)
    testbench = test.replace(_MISMATCH_FORMAT, f'"{nonce} Mismatches: ')
    top = [] if entry_point is None else ["-s", entry_point]
    # Lone surrogates and other unencodable text become escapes: a verdict, never an exception.
    sources = [source.encode("utf-8", "backslashreplace") for source in (program, testbench)]
    request = marshal.dumps((*sources, top, nonce, *tools))
    process = sandbox.run([sandbox.python_executable(), "-I", "-S", "-c", _DRIVER], timeout, limits, stdin=request)
    stdout, stderr = process.stdout.decode("utf-8", "replace"), process.stderr.decode("utf-8", "replace")
    reports = re.findall(rf"^{nonce} Mismatches: (\d+) in (\d+) samples$", stdout, flags=re.M)
    if stderr.startswith(f"{nonce} ") and not process.timed_out:
        first_error, _, stderr = stderr[len(nonce) + 1 :].partition("\n")
        result = f"failed: {first_error}"
    elif process.timed_out or process.returncode != 0 or len(reports) != 1:
        result = sandbox.describe_exit(process, "the simulation")
    elif reports[0][0] == "0" and reports[0][1] != "0":
        result = "passed"
    elif reports[0][0] == "0":  # the testbench compared nothing: a run that ended before its first sample
        result = "failed: 0 mismatches in 0 samples"
    else:
        result = f"failed: {reports[0][0]} mismatches in {reports[0][1]} samples"
    return sandbox.ExecutionResult(
        passed=result == "passed",
        result=result,
        stdout=stdout.replace(f"{nonce} ", ""),
        stderr=stderr,
        duration_s=process.duration_s,
    )
