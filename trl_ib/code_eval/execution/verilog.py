"""Verilog backend: Icarus Verilog, VerilogEval layout.

A problem's `test` holds the testbench and the reference module; the testbench compares the
candidate (`TopModule`/`top_module`) with the reference and ends with
`$display("Mismatches: %1d in %1d samples", ...)`. A sample passes when that line reports zero
mismatches.

Both steps run in the sandbox: `iverilog -g2012 [-s <entry_point>] -o sim.vvp testbench.sv design.sv`,
then `vvp -n` on the compiled simulation. To keep a design from printing a fake "Mismatches: 0" line
(or reading the real one out of the testbench), the testbench's format string is prefixed with a
random per-run nonce, every source and compiled file is deleted before the simulation starts, and
the simulation reads the compiled program from its consumed stdin pipe. A design that calls
`$finish` early never prints the nonce line and fails.
"""

import os
import re
import secrets
import tempfile

from . import sandbox


_MISMATCH_FORMAT = '"Mismatches: '


def run_sample(program: str, test: str, entry_point: str | None, timeout: float, limits: sandbox.Limits):
    """Compile `program` with the testbench `test` and simulate it.

    Args:
        program: the candidate design source.
        test: testbench + reference module; must print `"Mismatches: %1d in %1d samples"`.
        entry_point: the testbench's top module (`iverilog -s`), or None to let iverilog pick the roots.
        timeout: wall-clock seconds for compilation and simulation together.
        limits: rlimits and output truncation.

    Returns:
        `sandbox.ExecutionResult`; "failed: compile error: ..." when iverilog rejects the design and
        "failed: N mismatches in M samples" when the simulation disagrees with the reference.
    """
    iverilog, vvp = sandbox.find_tool("iverilog", "iverilog"), sandbox.find_tool("vvp", "iverilog")
    if _MISMATCH_FORMAT not in test:
        raise ValueError(
            f"test does not print {_MISMATCH_FORMAT}%1d in %1d samples\"; Verilog tests must be "
            "VerilogEval testbenches that report their mismatch count"
        )
    nonce = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="ib-ft-sample-", ignore_cleanup_errors=True) as workdir:
        for name, source in (("design.sv", program), ("testbench.sv", test.replace(_MISMATCH_FORMAT, f'"{nonce} Mismatches: '))):
            with open(os.path.join(workdir, name), "w") as file:
                file.write(source)
        top = [] if entry_point is None else ["-s", entry_point]
        argv = [iverilog, "-g2012", *top, "-o", "sim.vvp", "testbench.sv", "design.sv"]
        compiled = sandbox.run(argv, workdir, timeout, limits)
        if compiled.timed_out or compiled.returncode != 0:
            first_error = compiled.stderr.decode("utf-8", "replace").strip().split("\n")[0]
            result = "timed out" if compiled.timed_out else f"failed: compile error: {first_error}"
            return sandbox.ExecutionResult(False, result, "", compiled.stderr.decode("utf-8", "replace"), compiled.duration_s)
        with open(os.path.join(workdir, "sim.vvp"), "rb") as file:
            simulation = file.read()
        for name in ("design.sv", "testbench.sv", "sim.vvp"):
            os.remove(os.path.join(workdir, name))
        remaining = max(timeout - compiled.duration_s, 0.001)
        simulated = sandbox.run([vvp, "-n", "/dev/stdin"], workdir, remaining, limits, stdin=simulation)
    stdout = simulated.stdout.decode("utf-8", "replace")
    report = re.search(rf"{nonce} Mismatches: (\d+) in (\d+) samples", stdout)
    if report is None:
        result = sandbox.describe_exit(simulated, "the simulation")
    elif report[1] == "0":
        result = "passed"
    else:
        result = f"failed: {report[1]} mismatches in {report[2]} samples"
    return sandbox.ExecutionResult(
        passed=result == "passed",
        result=result,
        stdout=stdout.replace(f"{nonce} ", ""),
        stderr=simulated.stderr.decode("utf-8", "replace"),
        duration_s=compiled.duration_s + simulated.duration_s,
    )
