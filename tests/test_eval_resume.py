"""`ib-ft eval` resumes a killed run and splits its batches over processes, without changing the results."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tiny_models import tiny_llama, train_tokenizer
from trl_ib.cli.eval import main

# 30 problems whose completions never pass: the point is which samples exist, not their verdicts.
PROBLEMS = [
    {
        "task_id": f"p/{i}",
        "prompt": f"def f{i}(a, b):\n" + "    #" * (i % 4),
        "test": "def check(c):\n    assert False\n",
        "entry_point": f"f{i}",
    }
    for i in range(30)
]
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    directory = tmp_path_factory.mktemp("resume")
    tokenizer = train_tokenizer(directory / "model")
    tiny_llama(vocab_size=len(tokenizer)).save_pretrained(directory / "model")
    (directory / "problems.jsonl").write_text("".join(json.dumps(problem) + "\n" for problem in PROBLEMS))
    return directory


def flags(setup, output, *extra):
    return [
        "--model_name_or_path",
        str(setup / "model"),
        "--dataset",
        str(setup / "problems.jsonl"),
        "--k",
        "1",
        "--output_dir",
        str(output),
        "--timeout",
        "1",
        "--num_workers",
        "1",
        "--backend",
        "hf",  # the tiny model's heads are narrower than vLLM's CPU attention serves
        *extra,
    ]


SAMPLED = ["--num_samples", "2", "--temperature", "1.0", "--max_new_tokens", "8", "--batch_size", "4"]


def read(output):
    rows = [json.loads(line) for line in (output / "samples.jsonl").read_text().splitlines()]
    results = json.loads((output / "results.json").read_text())
    del results["args"]["output_dir"]
    return rows, results


def test_a_torn_run_resumes_to_the_same_samples_and_results(setup, tmp_path):
    main(flags(setup, tmp_path / "whole", *SAMPLED))
    rows, results = read(tmp_path / "whole")
    assert len(rows) == 60 and len({row["completion"] for row in rows}) > 30  # sampled: the samples differ
    # what a killed run leaves: the first batches' rows (no verdicts yet), the last one torn mid-line
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / "generation.json").write_text((tmp_path / "whole" / "generation.json").read_text())
    kept = [json.dumps({key: row[key] for key in ("task_id", "sample", "completion")}) for row in rows[:9]]
    (torn / "samples.jsonl").write_text("\n".join(kept) + '\n{"task_id": "p/')
    main(flags(setup, torn, *SAMPLED))
    assert read(torn) == (rows, results)
    # a finished run reruns without generating, and rescoring may change k and m
    main(flags(setup, torn, *SAMPLED[:-2], "--batch_size", "4", "--m", "1", "2", "--k", "2"))
    assert json.loads((torn / "results.json").read_text())["pass_at_k_m"] == {"pass@2^(1)": 0.0, "pass@2^(2)": 0.0}


def test_a_rerun_with_other_generation_arguments_is_refused(setup, tmp_path):
    main(flags(setup, tmp_path, *SAMPLED, "--num_problems", "2"))
    message = (
        r"holds samples generated with other arguments \(temperature: 1.0 there, 0.5 now\)\. Resume with the "
        r"same arguments, pass another --output_dir, or --overwrite_output_dir"
    )
    with pytest.raises(ValueError, match=message):
        main(flags(setup, tmp_path, *SAMPLED, "--num_problems", "2", "--temperature", "0.5"))
    with pytest.raises(
        ValueError, match=r"num_problems: 2 there, 3 now; prompts_sha256: '[0-9a-f]{64}' there, '[0-9a-f]"
    ):
        main(flags(setup, tmp_path, *SAMPLED, "--num_problems", "3"))
    main(flags(setup, tmp_path, *SAMPLED, "--num_problems", "3", "--overwrite_output_dir", "true"))
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 6


def eval_command(setup, output, *extra):
    return [sys.executable, "-m", "trl_ib.cli", "eval", *flags(setup, output, *extra)]


@pytest.mark.slow
def test_sigkill_mid_generation_then_rerun_equals_an_uninterrupted_run(setup, tmp_path):
    greedy = ["--num_samples", "1", "--temperature", "0", "--max_new_tokens", "48", "--batch_size", "1"]
    subprocess.run(eval_command(setup, tmp_path / "whole", *greedy), env=ENV, check=True, capture_output=True)
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        eval_command(setup, killed, *greedy), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    samples, deadline = killed / "samples.jsonl", time.monotonic() + 120
    while time.monotonic() < deadline and not (samples.exists() and samples.read_text().count("\n") >= 3):
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    written = samples.read_text().count("\n")
    assert 3 <= written < 30 and not (killed / "results.json").exists()  # killed mid-generation, rows on disk
    subprocess.run(eval_command(setup, killed, *greedy), env=ENV, check=True, capture_output=True)
    rows, results = read(killed)
    assert [(row["task_id"], row["sample"]) for row in rows] == [
        (f"p/{i}", 0) for i in range(30)
    ]  # none lost or twice
    assert (rows, results) == read(tmp_path / "whole")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("decoding", ["greedy", "sampled"])
def test_two_processes_split_the_batches_and_score_once(setup, tmp_path, decoding):
    """`accelerate launch` with 2 CPU processes (gloo): each generates half of the batches, the main process
    scores once; samples and results equal one process's (sampled ones too: each batch has its own seed)."""
    extra = SAMPLED if decoding == "sampled" else ["--num_samples", "3", "--temperature", "0", "--max_new_tokens", "8"]
    main(flags(setup, tmp_path / "one", *extra))
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        "trl_ib.cli",
        "eval",
        *flags(setup, tmp_path / "two", *extra),
    ]
    result = subprocess.run(launch, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "; 2 processes" in result.stdout
    assert result.stdout.count("pass@1^(1)") == 1  # scored once, on the main process
    assert read(tmp_path / "two") == read(tmp_path / "one")


def test_processes_that_did_not_join_are_refused(monkeypatch):
    from trl_ib.cli import eval as evaluation

    class Alone:  # what accelerate reports in each of 2 launched processes it did not join
        num_processes = 1

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(evaluation, "PartialState", lambda cpu: Alone())
    with pytest.raises(RuntimeError, match=r"started 2 processes \(WORLD_SIZE\) but accelerate joined 1: each would"):
        evaluation.process_state()
