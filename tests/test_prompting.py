import pytest

from tiny_models import CHAT_TEMPLATE, train_tokenizer
from trl_ib.code_eval.execution import LANGUAGES
from trl_ib.code_eval.extraction import cut_at_stop
from trl_ib.generation.prompting import PromptFormat, resolve_prompt_mode

PROMPT = 'def one():\n    """Return 1."""\n'


@pytest.fixture()
def tokenizers(tmp_path):
    plain = train_tokenizer(tmp_path / "plain")
    chat = train_tokenizer(tmp_path / "chat")
    chat.chat_template = CHAT_TEMPLATE
    return plain, chat


def test_auto_rule_and_chat_without_template(tokenizers):
    plain, chat = tokenizers
    assert resolve_prompt_mode("auto", chat, "HuggingFaceTB/SmolLM2-135M-Instruct") == "chat"
    assert resolve_prompt_mode("auto", chat, "smollm2-135m-instruct") == "chat"
    assert resolve_prompt_mode("auto", chat, "google/gemma-2-2b-it") == "chat"
    assert resolve_prompt_mode("auto", chat, "Qwen/Qwen2.5-Coder-0.5B") == "completion"  # a base model with a template
    assert resolve_prompt_mode("auto", plain, "some/model-Instruct") == "completion"  # no template
    assert resolve_prompt_mode("completion", chat, "x-instruct") == "completion"
    with pytest.raises(
        ValueError,
        match="prompt_mode='chat' needs a tokenizer with a chat template, and the tokenizer "
        "of 'tiny' has none; use --prompt_mode completion",
    ):
        resolve_prompt_mode("chat", plain, "tiny")
    with pytest.raises(ValueError, match=r"prompt_mode='instruct' is not supported; choose one of \['auto', "):
        resolve_prompt_mode("instruct", chat, "tiny")
    with pytest.raises(ValueError, match="mode='auto' is invalid; choose 'completion' or 'chat'"):
        PromptFormat("auto")
    with pytest.raises(ValueError, match="language='rust' is not supported"):
        PromptFormat(language="rust")


def test_render(tokenizers):
    plain, chat = tokenizers
    assert PromptFormat("completion").render(PROMPT, plain) == PROMPT
    assert PromptFormat("chat", instruction_prefix="Solve:", response_prefix="Here:").render(PROMPT, chat) == (
        '<user>Solve:\n```\ndef one():\n    """Return 1."""\n```\n</user>\n<assistant>Here:\n```python\n'
    )
    assert (
        PromptFormat("chat", "verilog")
        .render("Implement TopModule.", chat)
        .startswith(f"<user>{LANGUAGES['verilog'].instruction_prefix}\n```\nImplement TopModule.\n```\n</user>\n")
    )
    assert PromptFormat("chat", "verilog").render("x", chat).endswith(":\n```verilog\n")
    # render's check is resolve_prompt_mode's, with the tokenizer's name
    with pytest.raises(
        ValueError, match="prompt_mode='chat' needs a tokenizer with a chat template, and the tokenizer"
    ):
        PromptFormat("chat").render(PROMPT, plain)


def test_stop_sequences_and_programs():
    completion, chat = PromptFormat("completion"), PromptFormat("chat")
    assert completion.stop_sequences[0] == "\ndef " and chat.stop_sequences == ["\n```\n"]
    assert PromptFormat("chat", "verilog").stop_sequences == ["\n```\n", "endmodule"]
    assert completion.program(PROMPT, "    return 1\n") == PROMPT + "    return 1\n"
    assert completion.program(PROMPT, " \n") is None
    assert chat.program(PROMPT, "def one():\n    return 1\n\nprint(one())\n", "one") == (
        PROMPT + "\n\ndef one():\n    return 1\n"
    )
    header = "// AND gate\nmodule TopModule(input a, input b, output y);\n"
    assert PromptFormat("completion", "verilog").program(header, "  assign y = a & b;\n") == (
        "module TopModule(input a, input b, output y);\n  assign y = a & b;\nendmodule\n"
    )
    assert PromptFormat("chat", "verilog").program("spec", "module TopModule(output y);\n  assign y = 1;\n") == (
        "module TopModule(output y);\n  assign y = 1;\nendmodule\n"
    )
    assert PromptFormat("chat", "verilog").program("spec", "\n```\nI would use an AND gate.") is None


@pytest.mark.parametrize("language", ["python", "verilog"])
def test_chat_stop_keeps_the_code_of_an_answer_that_closes_the_opened_block_at_once(language):
    """The answer as generate_samples leaves it (cut at the first stop sequence) still holds the later block's code;
    with a bare fence as the stop it was cut to nothing: "failed: no code in the answer"."""
    chat = PromptFormat("chat", language)
    code = "def one():\n    return 1\n" if language == "python" else "module TopModule(output y);\n  assign y = 1;\n"
    answer = f"```\n\nHere it is:\n```{language}\n{code}```\n\nThat is all.\n"
    expected = PROMPT + "\n\n" + code if language == "python" else code + "endmodule\n"
    assert chat.program(PROMPT, cut_at_stop(answer, chat.stop_sequences), "one") == expected
    assert chat.program(PROMPT, cut_at_stop(answer, ["```"]), "one") is None  # the former stop sequence
    # the usual answer, code then the closing fence, still ends there
    usual = f"{code}```\n\n```{language}\nexample()\n```\n"
    assert cut_at_stop(usual, chat.stop_sequences) == code.rstrip("\n")
