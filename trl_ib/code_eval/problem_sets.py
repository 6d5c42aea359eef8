"""Problem sets on disk, as lists of dicts with keys task_id, prompt, test, entry_point (HumanEval's layout).

VerilogEval (v2, spec-to-rtl) keeps one problem in three files of a directory:

    Prob001_zero_prompt.txt    the specification: implement `module TopModule` with this interface and behaviour
    Prob001_zero_test.sv       the testbench, top module `tb`, which prints "Mismatches: N in M samples"
    Prob001_zero_ref.sv        the reference design, `module RefModule`

The test of a problem is the testbench followed by the reference module, and its entry point is `tb`.
"""

from pathlib import Path

VERILOG_EVAL_SUFFIXES = ("_prompt.txt", "_test.sv", "_ref.sv")


def is_verilog_eval_dir(path: str | Path) -> bool:
    """Whether `path` is a directory holding VerilogEval `*_prompt.txt` files."""
    return Path(path).is_dir() and any(Path(path).glob("*_prompt.txt"))


def load_verilog_eval(directory: str | Path) -> list[dict]:
    """The problems of a VerilogEval directory, sorted by name (Prob001 first).

    Raises:
        ValueError: the directory has no `*_prompt.txt`, or a problem lacks its `_test.sv` or `_ref.sv`.
    """
    directory = Path(directory)
    prompts = sorted(directory.glob("*_prompt.txt"))
    if not prompts:
        raise ValueError(f"{str(directory)!r} holds no VerilogEval problem: no file named ProbNNN_<name>_prompt.txt")
    problems = []
    for prompt_file in prompts:
        task_id = prompt_file.name.removesuffix("_prompt.txt")
        test_file, ref_file = (directory / f"{task_id}{suffix}" for suffix in VERILOG_EVAL_SUFFIXES[1:])
        missing = [path.name for path in (test_file, ref_file) if not path.is_file()]
        if missing:
            raise ValueError(
                f"VerilogEval problem {task_id!r} in {str(directory)!r} lacks {', '.join(missing)}; every "
                f"ProbNNN_<name> needs {', '.join('<name>' + suffix for suffix in VERILOG_EVAL_SUFFIXES)}"
            )
        test = test_file.read_text().rstrip("\n") + "\n\n" + ref_file.read_text()
        problems.append({"task_id": task_id, "prompt": prompt_file.read_text(), "test": test, "entry_point": "tb"})
    return problems


def load_problems(
    dataset: str,
    split: str = "test",
    num_problems: int | None = None,
    columns: dict[str, str] | None = None,
) -> list[dict]:
    """The first `num_problems` problems of `dataset` as dicts with keys task_id, prompt, test, entry_point.

    Args:
        dataset: a .json/.jsonl(.gz) file, a VerilogEval directory, or a name or directory for `datasets.load_dataset`.
        columns: {"prompt": column, "test": column, "entry_point": column} where the dataset names them otherwise.
    """
    if is_verilog_eval_dir(dataset):
        problems = load_verilog_eval(dataset)
    else:
        import datasets  # only for these sources, so that the evaluator imports without it

        if dataset.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz")):
            rows = datasets.load_dataset("json", data_files=dataset, split="train")
        else:
            rows = datasets.load_dataset(dataset, split=split)
        columns = {"prompt": "prompt", "test": "test", "entry_point": "entry_point", **(columns or {})}
        missing = sorted(column for column in columns.values() if column not in rows.column_names)
        if missing:
            raise ValueError(
                f"dataset {dataset!r} lacks columns {missing}; it has {rows.column_names}. Name the prompt, test and "
                "entry point columns with --prompt_column, --test_column and --entry_point_column"
            )
        problems = [
            {"task_id": row.get("task_id", index), **{key: row[column] for key, column in columns.items()}}
            for index, row in enumerate(rows)
        ]
    return problems[:num_problems] if num_problems else problems
