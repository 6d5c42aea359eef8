import json
from pathlib import Path

import pytest

from trl_ib.code_eval import score
from trl_ib.code_eval.problem_sets import is_verilog_eval_dir, load_verilog_eval

ROWS = [
    json.loads(line)
    for line in (Path(__file__).parent / "data" / "verilog" / "problems.jsonl").read_text().splitlines()
]


def write_verilog_eval(directory: Path, rows: list[dict] = ROWS) -> Path:
    """`rows` (prompt, test = testbench + RefModule) in VerilogEval's layout: Prob00N_<name>_{prompt.txt,test.sv,ref.sv}."""
    directory.mkdir(parents=True, exist_ok=True)
    for number, row in enumerate(rows, 1):
        stem = f"Prob{number:03d}_{row['task_id'].split('/')[1]}"
        testbench, reference = row["test"].split("\nmodule RefModule")
        (directory / f"{stem}_prompt.txt").write_text(row["prompt"])
        (directory / f"{stem}_test.sv").write_text(testbench + "\n")
        (directory / f"{stem}_ref.sv").write_text("module RefModule" + reference)
    return directory


def test_verilog_eval_layout_loads_and_its_reference_solutions_pass(tmp_path):
    directory = write_verilog_eval(tmp_path / "spec-to-rtl")
    problems = load_verilog_eval(directory)
    assert is_verilog_eval_dir(directory) and not is_verilog_eval_dir(tmp_path / "missing")
    assert [p["task_id"] for p in problems] == [
        f"Prob{n:03d}_{row['task_id'].split('/')[1]}" for n, row in enumerate(ROWS, 1)
    ]
    assert [p["prompt"] for p in problems] == [row["prompt"] for row in ROWS]
    assert {p["entry_point"] for p in problems} == {"tb"}
    assert problems[0]["test"].startswith("module tb();") and "\n\nmodule RefModule(" in problems[0]["test"]
    programs = [[row["prompt"] + row["canonical_solution"], row["prompt"] + row["buggy_solution"]] for row in ROWS]
    scores = score(programs, [p["test"] for p in problems], ["tb"] * len(problems), language="verilog", progress=False)
    assert scores.num_correct == [1] * len(ROWS)


def test_verilog_eval_errors_name_the_missing_file(tmp_path):
    directory = write_verilog_eval(tmp_path / "broken", ROWS[:2])
    stem = next(directory.glob("Prob002_*_ref.sv")).name.removesuffix("_ref.sv")
    (directory / f"{stem}_ref.sv").unlink()
    with pytest.raises(
        ValueError,
        match=f"VerilogEval problem '{stem}' in .* lacks {stem}_ref.sv; every ProbNNN_<name> "
        "needs <name>_prompt.txt, <name>_test.sv, <name>_ref.sv",
    ):
        load_verilog_eval(directory)
    with pytest.raises(ValueError, match="holds no VerilogEval problem: no file named ProbNNN_<name>_prompt.txt"):
        load_verilog_eval(tmp_path)
