import pytest
from tiny_models import CHAT_TEMPLATE, train_tokenizer

from trl_ib.prompting import INSTRUCTION_PREFIX, PromptFormat, resolve_prompt_mode

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
    with pytest.raises(ValueError, match="prompt_mode='chat' needs a tokenizer with a chat template, and the tokenizer "
                                         "of 'tiny' has none; use --prompt_mode completion"):  # fmt: skip
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
    assert PromptFormat("chat", "verilog").render("Implement TopModule.", chat).startswith(
        f"<user>{INSTRUCTION_PREFIX['verilog']}\n```\nImplement TopModule.\n```\n</user>\n"
    )
    assert PromptFormat("chat", "verilog").render("x", chat).endswith(":\n```verilog\n")
    with pytest.raises(ValueError, match="prompt mode 'chat' needs a tokenizer with a chat template"):
        PromptFormat("chat").render(PROMPT, plain)


def test_stop_sequences_and_programs():
    completion, chat = PromptFormat("completion"), PromptFormat("chat")
    assert completion.stop_sequences[0] == "\ndef " and chat.stop_sequences == ["```"]
    assert PromptFormat("chat", "verilog").stop_sequences == ["```", "endmodule"]
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
