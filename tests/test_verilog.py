import json
import threading
import time
from pathlib import Path

import pytest

from trl_ib.code_eval.execution import Sample, SandboxError, run_samples, sandbox, verilog

PROBLEMS = [
    json.loads(line) for line in (Path(__file__).parent / "data/verilog/problems.jsonl").read_text().splitlines()
]
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
        "passed",
        "failed: 24 mismatches in 60 samples",  # and_gate
        "passed",
        "failed: 59 mismatches in 60 samples",  # mux2
        "passed",
        "failed: 46 mismatches in 60 samples",  # adder4
        "passed",
        "failed: 3 mismatches in 60 samples",  # dff8
        "passed",
        "failed: 54 mismatches in 60 samples",  # counter4
    ]


def test_compile_errors_fake_reports_and_hangs_fail():
    design = AND_GATE["prompt"] + "{body}endmodule\n"
    broken = design.format(body="  assign out = a &;\n")
    fake = design.format(
        body='  assign out = a | b;\n  initial begin $display("Mismatches: 0 in 60 samples"); $finish; end\n'
    )
    hang = design.format(body="  assign out = a & b;\n  initial while (1) begin end\n")
    samples = [Sample(program, AND_GATE["test"], "tb") for program in (broken, fake, hang)]
    assert run(samples, timeout=2.0) == [
        "failed: compile error: design.sv:7: syntax error",
        "failed: the design ends the simulation: $finish",
        "timed out",
    ]


def test_design_cannot_read_the_testbench_during_simulation():
    peek = (
        AND_GATE["prompt"]
        + '  assign out = a & b;\n  initial $display("fd=%0d", $fopen("testbench.sv", "r"));\nendmodule\n'
    )
    result = run_samples([Sample(peek, AND_GATE["test"], "tb")], language="verilog", progress=False)[0]
    assert result.passed
    assert result.stdout.startswith("fd=0\n")


def test_testbench_without_a_mismatch_report_is_rejected():
    with pytest.raises(ValueError, match='test does not print "Mismatches: %1d in %1d samples"'):
        run([Sample(AND_GATE["prompt"] + "endmodule\n", "module tb(); endmodule\n", "tb")])


def test_missing_icarus_says_how_to_install(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None if name == "iverilog" else f"/usr/bin/{name}")
    sandbox.find_tool.cache_clear()
    try:
        with pytest.raises(
            RuntimeError, match=r"iverilog is not installed; install it with `apt-get install -y iverilog`"
        ):
            run([Sample(AND_GATE["prompt"], AND_GATE["test"], "tb")])
    finally:
        sandbox.find_tool.cache_clear()


def counting_probe(monkeypatch, passed: bool) -> list:
    """Replace the probe's simulation with a slow fake that records each call."""
    calls = []

    def fake_run(*args):
        calls.append(args)
        time.sleep(0.2)  # long enough for every thread to arrive while the first probe runs
        return sandbox.ExecutionResult(
            passed=passed, result="passed" if passed else "failed: boom", stderr="no driver"
        )

    monkeypatch.setattr(verilog, "_run", fake_run)
    verilog.check_sandbox.cache_clear()
    return calls


def call_from_threads(function, count: int = 8) -> list:
    """Call `function` from `count` threads released at once; returns what each raised (None: nothing)."""
    barrier, raised = threading.Barrier(count), [None] * count

    def call(index):
        barrier.wait()
        try:
            function()
        except Exception as error:
            raised[index] = error

    threads = [threading.Thread(target=call, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return raised


def test_check_sandbox_probes_once_for_concurrent_first_calls(monkeypatch):
    calls = counting_probe(monkeypatch, passed=True)
    try:
        assert call_from_threads(verilog.check_sandbox) == [None] * 8
        verilog.check_sandbox()
        assert len(calls) == 1
    finally:
        verilog.check_sandbox.cache_clear()


def test_check_sandbox_remembers_a_failure_and_raises_it_every_time(monkeypatch):
    calls = counting_probe(monkeypatch, passed=False)
    message = "the Verilog sandbox cannot run a known-good design: failed: boom; no driver"
    try:
        raised = call_from_threads(verilog.check_sandbox)
        assert [(type(error), str(error)) for error in raised] == [(SandboxError, message)] * 8
        for _ in range(3):
            with pytest.raises(SandboxError) as again:
                verilog.check_sandbox()
            assert str(again.value) == message
        with pytest.raises(SandboxError, match="cannot run a known-good design: failed: boom"):
            run_samples(
                [Sample(AND_GATE["prompt"], AND_GATE["test"], "tb")] * 4,
                language="verilog",
                num_workers=2,
                progress=False,
            )
        assert len(calls) == 1
    finally:
        verilog.check_sandbox.cache_clear()
