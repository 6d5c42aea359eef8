"""trl_ib.code_eval.execution.languages: one record per language, one backend protocol both backends follow, and a
new record is all that `run_samples` and `PromptFormat` need."""

import inspect

import pytest

from trl_ib.code_eval.execution import (
    LANGUAGES,
    Backend,
    ExecutionResult,
    Language,
    Limits,
    Sample,
    python,
    run_samples,
    verilog,
)
from trl_ib.generation.prompting import PromptFormat


def test_every_record_is_keyed_by_its_name_and_its_backend_follows_the_protocol():
    assert sorted(LANGUAGES) == ["python", "verilog"]
    assert {name: record.backend for name, record in LANGUAGES.items()} == {
        "python": python.ForkServers,
        "verilog": verilog.IcarusVerilog,
    }
    protocol = list(inspect.signature(Backend.run_sample).parameters)
    for name, record in LANGUAGES.items():
        assert record.name == name
        with record.backend() as backend:  # neither starts a sandbox before its first sample
            assert isinstance(backend, Backend), name
            assert list(inspect.signature(type(backend).run_sample).parameters) == protocol, name


class Uppercase:
    """A toy backend: a sample passes when its program is its test in upper case; records entering and leaving."""

    events: list[str] = []

    def __enter__(self):
        self.events.append("enter")
        return self

    def __exit__(self, *exc_info):
        self.events.append("exit")

    def run_sample(self, program, test, entry_point, timeout, limits):
        passed = program == test.upper()
        return ExecutionResult(passed, "passed" if passed else f"failed: {entry_point} at {timeout} s")


def test_a_new_record_is_all_a_language_needs(monkeypatch):
    toy = Language(
        name="toy",
        backend=Uppercase,
        stop_sequences=("\nEND",),
        chat_stop_sequences=("\n```\n",),
        instruction_prefix="Shout:",
        response_prefix="Shouted:",
        completion_program=lambda prompt, answer, entry_point: (prompt + answer).upper() or None,
        chat_program=lambda prompt, answer, entry_point: answer.strip().upper() or None,
    )
    monkeypatch.setitem(LANGUAGES, "toy", toy)
    assert isinstance(Uppercase(), Backend)
    samples = [Sample("AB", "ab"), Sample("ab", "ab", "f"), Sample("X", "x")]
    results = run_samples(samples, language="toy", timeout=2.5, num_workers=2, limits=Limits(), progress=False)
    assert [result.result for result in results] == ["passed", "failed: f at 2.5 s", "passed"]
    assert Uppercase.events == ["enter", "exit"]  # one backend per call, entered once
    assert PromptFormat("completion", "toy").stop_sequences == ["\nEND"]
    assert PromptFormat("chat", "toy").stop_sequences == ["\n```\n"]
    assert PromptFormat("completion", "toy").program("a", "b") == "AB"
    assert PromptFormat("chat", "toy").program("a", " b \n") == "B"
    monkeypatch.delitem(LANGUAGES, "toy")
    with pytest.raises(ValueError, match=r"^language='toy' is not supported; choose one of \['python', 'verilog'\]$"):
        PromptFormat(language="toy")
