import json
from pathlib import Path

import pytest

from trl_ib.code_eval.execution import Sample, run_samples, sandbox


PROBLEMS = [json.loads(line) for line in (Path(__file__).parent / "data/verilog/problems.jsonl").read_text().splitlines()]
AND_GATE = PROBLEMS[0]


def run(samples, timeout=5.0):
    return [result.result for result in run_samples(samples, language="verilog", timeout=timeout, progress=False)]


def test_correct_designs_pass_and_buggy_designs_report_their_mismatches():
    samples = [
        Sample(problem["prompt"] + problem[solution], problem["test"], problem["entry_point"])
        for problem in PROBLEMS
        for solution in ("canonical_solution", "buggy_solution")
    ]
    assert run(samples) == [
        "passed", "failed: 24 mismatches in 60 samples",  # and_gate
        "passed", "failed: 59 mismatches in 60 samples",  # mux2
        "passed", "failed: 46 mismatches in 60 samples",  # adder4
        "passed", "failed: 3 mismatches in 60 samples",  # dff8
        "passed", "failed: 54 mismatches in 60 samples",  # counter4
    ]  # fmt: skip


def test_compile_errors_fake_reports_and_hangs_fail():
    design = AND_GATE["prompt"] + "{body}endmodule\n"
    broken = design.format(body="  assign out = a &;\n")
    fake = design.format(body='  assign out = a | b;\n  initial begin $display("Mismatches: 0 in 60 samples"); $finish; end\n')
    hang = design.format(body="  assign out = a & b;\n  initial while (1) begin end\n")
    samples = [Sample(program, AND_GATE["test"], "tb") for program in (broken, fake, hang)]
    assert run(samples, timeout=2.0) == [
        "failed: compile error: design.sv:7: syntax error",
        "failed: the design ends the simulation: $finish",
        "timed out",
    ]


def test_design_cannot_read_the_testbench_during_simulation():
    peek = AND_GATE["prompt"] + '  assign out = a & b;\n  initial $display("fd=%0d", $fopen("testbench.sv", "r"));\nendmodule\n'
    result = run_samples([Sample(peek, AND_GATE["test"], "tb")], language="verilog", progress=False)[0]
    assert result.passed
    assert result.stdout.startswith("fd=0\n")


def test_testbench_without_a_mismatch_report_is_rejected():
    with pytest.raises(ValueError, match="test does not print \"Mismatches: %1d in %1d samples\""):
        run([Sample(AND_GATE["prompt"] + "endmodule\n", "module tb(); endmodule\n", "tb")])


def test_missing_icarus_says_how_to_install(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None if name == "iverilog" else f"/usr/bin/{name}")
    sandbox.find_tool.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"iverilog is not installed; install it with `apt-get install -y iverilog`"):
            run([Sample(AND_GATE["prompt"], AND_GATE["test"], "tb")])
    finally:
        sandbox.find_tool.cache_clear()
