import pytest

from trl_ib.code_eval import score
from trl_ib.code_eval.extraction import code_in_answer, cut_at_stop, python_program, sanitize_python, verilog_program

PROMPT = 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum of xs."""\n'
TEST = "def check(candidate):\n    assert candidate([1, 2, 3]) == 6\n    assert candidate([]) == 0\n"
# A chat answer as small instruct models write them: the code, a usage example, a __main__ block, then prose.
CHATTY_ANSWER = '''import math
from typing import List

SCALE = 1

def helper(x):
    return x * SCALE

def unused():
    return math.pi

@staticmethod
def decorated():
    return 0

def total(xs: List[int]) -> int:
    """Sum of xs."""
    return sum(helper(x) for x in xs)

print(total([1, 2, 3]))
assert total([1]) == 2
if __name__ == "__main__":
    raise SystemExit(total([]))

This function adds up the list'''


def test_cut_at_stop():
    assert cut_at_stop("    return 1\ndef g():\n#", ["\ndef ", "\n#"]) == "    return 1"
    assert cut_at_stop("    return 1", ["\ndef "]) == "    return 1"
    assert cut_at_stop("abc", []) == "abc"


@pytest.mark.parametrize(
    "answer, code",
    [
        ("def f():\n    return 1\n```\nIt returns 1.", "def f():\n    return 1\n"),  # the block the prefix opened
        ("\n```\n\nHere it is:\n```python\ndef f():\n    return 2\n```\nDone.", "def f():\n    return 2\n"),
        ("```python\ndef f():\n    return 3\n```", "def f():\n    return 3\n"),  # a block of its own
        ("\n```\nThe function takes a list of numbers", ""),
        ("", ""),
    ],
)
def test_code_in_answer(answer, code):
    assert code_in_answer(answer) == code


def test_sanitize_keeps_the_entry_point_and_what_it_reaches():
    assert sanitize_python(CHATTY_ANSWER, "total") == (
        "import math\nfrom typing import List\nSCALE = 1\ndef helper(x):\n    return x * SCALE\n"
        'def total(xs: List[int]) -> int:\n    """Sum of xs."""\n    return sum(helper(x) for x in xs)\n'
    )
    # without an entry point every definition stays; the decorator comes with its function
    assert "@staticmethod\ndef decorated():" in sanitize_python(CHATTY_ANSWER, None)
    assert sanitize_python("def other():\n    return 1\n", "total") is None  # the entry point is not defined
    assert sanitize_python("This is prose, (not code", "total") is None
    # a tail cut mid-statement by the token limit is dropped
    assert sanitize_python("def total(xs):\n    return sum(xs)\n\ndef more(:\n    ret", "total") == (
        "def total(xs):\n    return sum(xs)\n"
    )


def test_python_program_runs_where_the_raw_answer_would_not():
    chat = python_program(PROMPT, CHATTY_ANSWER, "total")
    assert chat.startswith(PROMPT.rstrip("\n") + "\n\n\nimport math\n")
    body_only = python_program(PROMPT, "    return sum(xs)\n", "total")  # the model wrote only the body
    assert body_only == PROMPT + "    return sum(xs)\n"
    assert python_program(PROMPT, "\n```\nThe function takes a list", "total") is None
    # prompt + raw answer fails on the prose (line 5 + 25)
    scores = score([[chat, body_only, PROMPT + CHATTY_ANSWER, None]], [TEST], ["total"], progress=False)
    assert [result.result for result in scores.results[0]] == [
        "passed",
        "passed",
        "failed: invalid syntax (<string>, line 30)",
        "failed: no code in the answer",
    ]


def test_verilog_program():
    module = "module TopModule(input a, output y);\n  assign y = a;\n"
    assert verilog_program("Sure, here it is:\n" + module) == module + "endmodule\n"
    assert verilog_program("// a comment about a module\n" + module + "endmodule\n```\ntext") == module + "endmodule\n"
    assert verilog_program("I cannot write this module.") is None
