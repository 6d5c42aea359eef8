"""One record per programming language: its execution backend, its stop sequences, its chat prefixes and how a
program is built from a model's answer. `LANGUAGES` is the only list of languages: `run_samples`, `PromptFormat`,
`ib-ft eval --language` and the metric all read it. docs/LANGUAGES.md says how to add one.

    LANGUAGES["python"].backend()            # a Backend: `with backend: backend.run_sample(...)`
    LANGUAGES["verilog"].stop_sequences      # ("endmodule",)
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..extraction import FENCE, code_in_answer, python_program, verilog_program
from . import python, verilog
from .sandbox import ExecutionResult, Limits


@runtime_checkable
class Backend(Protocol):
    """What `run_samples` needs of a language: made once per call, entered once (`with backend:`), then
    `run_sample` from every worker thread at once; leaving it frees what it started (e.g. fork servers)."""

    def __enter__(self) -> "Backend": ...

    def __exit__(self, *exc_info) -> None: ...

    def run_sample(
        self, program: str, test: str, entry_point: str | None, timeout: float, limits: Limits
    ) -> ExecutionResult:
        """The verdict on `program` against `test` in a fresh sandbox within `timeout` wall-clock seconds; a
        hostile program yields a verdict, never an exception. Raises `SandboxError` when the sandbox itself
        cannot run programs here (never a silent 0)."""
        ...


# A program builder: (prompt, answer, entry_point) -> the program to test, or None when the answer holds no code.
ProgramBuilder = Callable[[str, str, str | None], str | None]


@dataclass(frozen=True)
class Language:
    """Everything ib-ft knows of one language.

    Args:
        name: the key in `LANGUAGES`, the `language=` of `run_samples`, `PromptFormat` and the metric, and the tag of
            the code block a chat answer is opened with (```` ```python ````).
        backend: a `Backend` factory (a class), called once per `run_samples` call.
        stop_sequences: completion mode: generation stops at (and drops) the first one.
        chat_stop_sequences: chat mode: the fence closing the block the response prefix opened, on a line of its
            own after code. Not a bare fence: an answer that closes the opened block at once (and writes its code
            in a later block) must go on to that later block. `generate_samples` matches stops in the new tokens
            only, so the answer's first fence (nothing before it) does not match "\\n```\\n", nor does a later
            "```python" line.
        instruction_prefix: chat mode's default text before the problem in the user turn.
        response_prefix: chat mode's default start of the answer, before the code block it opens.
        completion_program: the program for a completion-mode answer (the prompt's continuation).
        chat_program: the program for a chat-mode answer (it starts inside the opened code block).
    """

    name: str
    backend: Callable[[], Backend]
    stop_sequences: tuple[str, ...]
    chat_stop_sequences: tuple[str, ...]
    instruction_prefix: str
    response_prefix: str
    completion_program: ProgramBuilder
    chat_program: ProgramBuilder


def _prompt_and_answer(prompt: str, answer: str, entry_point: str | None) -> str | None:
    return prompt + answer if answer.strip() else None


def _design_in_completion(prompt: str, answer: str, entry_point: str | None) -> str | None:
    return verilog_program(prompt + answer)


def _design_in_answer(prompt: str, answer: str, entry_point: str | None) -> str | None:
    return verilog_program(code_in_answer(answer))


_CLOSING_FENCE = f"\n{FENCE}\n"
LANGUAGES: dict[str, Language] = {
    language.name: language
    for language in (
        Language(
            name="python",
            backend=python.ForkServers,
            stop_sequences=("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"),
            chat_stop_sequences=(_CLOSING_FENCE,),
            instruction_prefix="Please provide a self-contained Python script that solves the following problem in "
            "a markdown code block:",
            response_prefix="Below is a Python script with a self-contained function that solves the problem and "
            "passes corresponding tests:",
            completion_program=_prompt_and_answer,
            chat_program=python_program,
        ),
        Language(
            name="verilog",
            backend=verilog.IcarusVerilog,
            stop_sequences=("endmodule",),
            chat_stop_sequences=(_CLOSING_FENCE, "endmodule"),
            instruction_prefix="Please provide the complete Verilog module TopModule that solves the following "
            "problem in a markdown code block:",
            response_prefix="Below is the Verilog module TopModule that solves the problem:",
            completion_program=_design_in_completion,
            chat_program=_design_in_answer,
        ),
    )
}


def check_language(language: str) -> Language:
    """The record of `language`; a ValueError naming the supported languages when there is none."""
    if language not in LANGUAGES:
        raise ValueError(f"language={language!r} is not supported; choose one of {sorted(LANGUAGES)}")
    return LANGUAGES[language]
