"""Prompt modes: what a code model is shown for a problem, and the program built from what it answers.

completion  the problem's prompt as is (a signature and docstring, a module header); the model continues it,
            generation stops at a language's stop sequences and the program is prompt + completion.
chat        EvalPlus's recipe for instruct models: the user turn is an instruction prefix and the prompt in a code
            block, passed through `tokenizer.apply_chat_template(..., add_generation_prompt=True)`; the assistant
            turn is started with a response prefix that opens a code block, generation stops at the fence closing
            it (a fence on a line of its own after code, `Language.chat_stop_sequences`), and the program is the
            code of the answer, sanitized (`trl_ib.code_eval.extraction`).
auto        chat when the tokenizer has a chat template and the model's name or path says it is tuned for chat
            (it contains "instruct", "chat" or "-it", any case), completion otherwise. Base models often ship a
            chat template too, so the template alone does not decide.

The same `PromptFormat` serves `ib-ft eval`, `PassAtKMCallback` and the demo; what differs by language (stop
sequences, chat prefixes, the program builders) is the language's record, `trl_ib.code_eval.execution.LANGUAGES`.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ..code_eval.execution.languages import Language, check_language
from ..code_eval.extraction import FENCE, failing_program

PROMPT_MODES = ("auto", "completion", "chat")
_CHAT_MODEL_NAME = re.compile(r"instruct|chat|-it\b", re.IGNORECASE)


def check_prompt_mode(prompt_mode: str) -> None:
    """Raise a ValueError naming the supported modes when `prompt_mode` is not one of `PROMPT_MODES`."""
    if prompt_mode not in PROMPT_MODES:
        raise ValueError(f"prompt_mode={prompt_mode!r} is not supported; choose one of {list(PROMPT_MODES)}")


def resolve_prompt_mode(prompt_mode: str, tokenizer: PreTrainedTokenizerBase, model_name_or_path: str) -> str:
    """ "completion" or "chat" for `prompt_mode` ("auto" decided by the rule in this module's docstring)."""
    check_prompt_mode(prompt_mode)
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if prompt_mode == "chat" and not has_template:
        raise ValueError(
            f"prompt_mode='chat' needs a tokenizer with a chat template, and the tokenizer of {model_name_or_path!r} "
            "has none; use --prompt_mode completion (or auto)"
        )
    if prompt_mode == "auto":
        return "chat" if has_template and _CHAT_MODEL_NAME.search(str(model_name_or_path)) else "completion"
    return prompt_mode


@dataclass(frozen=True)
class PromptFormat:
    """How a problem's prompt is shown to the model and how a program is built from the model's answer.

    Args:
        mode: "completion" or "chat" ("auto" is resolved first, by `resolve_prompt_mode`).
        language: a key of `LANGUAGES` ("python", "verilog").
        instruction_prefix, response_prefix: chat mode only; None takes the language's default (its record's
            `instruction_prefix`, `response_prefix`).
    """

    mode: str = "completion"
    language: str = "python"
    instruction_prefix: str | None = None
    response_prefix: str | None = None

    def __post_init__(self):
        if self.mode not in ("completion", "chat"):
            raise ValueError(f"mode={self.mode!r} is invalid; choose 'completion' or 'chat' (resolve 'auto' first)")
        check_language(self.language)

    @property
    def language_record(self) -> Language:
        """The record of `language`: its stop sequences, chat prefixes and program builders."""
        return check_language(self.language)

    @property
    def stop_sequences(self) -> list[str]:
        """The default stop sequences of this mode and language."""
        language = self.language_record
        return list(language.chat_stop_sequences if self.mode == "chat" else language.stop_sequences)

    def render(self, prompt: str, tokenizer: PreTrainedTokenizerBase) -> str:
        """The text the model continues: `prompt` itself, or the chat turns ending inside an open code block."""
        if self.mode == "completion":
            return prompt
        language = self.language_record
        instruction = language.instruction_prefix if self.instruction_prefix is None else self.instruction_prefix
        response = language.response_prefix if self.response_prefix is None else self.response_prefix
        resolve_prompt_mode(
            "chat", tokenizer, getattr(tokenizer, "name_or_path", "")
        )  # raises without a chat template
        user = f"{instruction}\n{FENCE}\n{prompt.strip()}\n{FENCE}\n"
        turns = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        return f"{turns}{response}\n{FENCE}{self.language}\n"

    def program(self, prompt: str, answer: str, entry_point: str | None = None) -> str | None:
        """The program to test for `answer` (generated after `render(prompt)`, cut at the stop sequences);
        None when the answer has no code."""
        language = self.language_record
        build = language.chat_program if self.mode == "chat" else language.completion_program
        return build(prompt, answer, entry_point)


def build_programs(
    prompts: Sequence[str],
    completions: Sequence[Sequence[str]],
    prompt_format: PromptFormat | str = "python",
    entry_points: Sequence[str | None] | None = None,
) -> list[list[str | None]]:
    """programs[problem][sample]: what `prompt_format` builds from each prompt and completion (a language name
    means completion mode in that language); None for a completion with no code. A completion that cannot be
    read (any exception while building its program) gets `failing_program` with the reason: one hostile answer
    fails its sample, never the run."""
    prompt_format = PromptFormat(language=prompt_format) if isinstance(prompt_format, str) else prompt_format
    entry_points = [None] * len(prompts) if entry_points is None else entry_points

    def program(prompt: str, completion: str, entry_point: str | None) -> str | None:
        try:
            return prompt_format.program(prompt, completion, entry_point)
        except Exception as error:  # noqa: BLE001  generated text is hostile: its failure is its verdict
            reason = f"the answer could not be read ({type(error).__name__}: {error})"
            return failing_program(prompt_format.language, reason)

    return [
        [program(prompt, completion, entry_point) for completion in group]
        for prompt, group, entry_point in zip(prompts, completions, entry_points)
    ]
