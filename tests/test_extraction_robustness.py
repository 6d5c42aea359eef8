"""Chat-mode extraction on hostile and awkward answers: nothing crashes scoring, nothing passes that should not,
and what a grader would accept runs (the classes of the extraction module's docstring, each run in the sandbox)."""

import ast
import dataclasses
import json
import random

import pytest

import trl_ib.trainer.callbacks
from test_callbacks import PROBLEMS as CALLBACK_PROBLEMS
from test_callbacks import make_trainer
from tiny_models import CHAT_TEMPLATE, tiny_llama, train_tokenizer
from trl_ib.cli.eval import main
from trl_ib.code_eval import LANGUAGES, score
from trl_ib.code_eval.extraction import code_in_answer, python_program, sanitize_python
from trl_ib.generation.prompting import PromptFormat, build_programs
from trl_ib.trainer.callbacks import PassAtKMCallback

CHAT = PromptFormat("chat")
# HumanEval/38: the tests take encode_cyclic from the candidate's namespace and draw strings with random.randint.
PROMPT_38 = '''

def encode_cyclic(s: str):
    """
    returns encoded string by cycling groups of three characters.
    """
    # split string to groups. Each of length 3.
    groups = [s[(3 * i):min((3 * i + 3), len(s))] for i in range((len(s) + 2) // 3)]
    # cycle elements in each group. Unless group has fewer elements than 3.
    groups = [(group[1:] + group[0]) if len(group) == 3 else group for group in groups]
    return "".join(groups)


def decode_cyclic(s: str):
    """
    takes as input string encoded with encode_cyclic function. Returns decoded string.
    """
'''
TEST_38 = """

METADATA = {}


def check(candidate):
    from random import randint, choice
    import string

    letters = string.ascii_lowercase
    for _ in range(100):
        str = ''.join(choice(letters) for i in range(randint(10, 20)))
        encoded_str = encode_cyclic(str)
        assert candidate(encoded_str) == str
"""
PROMPT = 'import math\n\n\ndef hyp(a: float, b: float) -> float:\n    """The hypotenuse."""\n'
TEST = "def check(candidate):\n    assert candidate(3, 4) == 5\n    assert candidate(5, 12) == 13\n"
RIGHT = "def hyp(a, b):\n    return math.sqrt(a * a + b * b)\n"
DEEP = "x = " + "-" * 3000 + "1"  # under 50 SmolLM2 tokens; ast.parse raises RecursionError on it
DEEPER = "x = " + "-" * 100_000 + "1"  # MemoryError


def verdicts(answers, prompt=PROMPT, test=TEST, entry_point="hyp"):
    programs = build_programs([prompt], [answers], CHAT, [entry_point])
    return [result.result for result in score(programs, [test], [entry_point], progress=False).results[0]]


def test_the_humaneval_38_forgery_passes_unsanitized_and_fails_now():
    forgery = "    return s\n\n\nimport random\nrandom.randint = lambda a, b: 0\n"  # every drawn string is ""
    right = "    return encode_cyclic(encode_cyclic(s))\n"
    program = python_program(PROMPT_38, forgery, "decode_cyclic")
    assert program == PROMPT_38 + "    return s\n\n\nimport random\n"  # the body, then only the import
    programs = [[PROMPT_38 + forgery, program, python_program(PROMPT_38, right, "decode_cyclic")]]
    results = score(programs, [TEST_38], ["decode_cyclic"], progress=False).results[0]
    assert [result.result for result in results] == ["passed", "failed: ", "passed"]
    # a full answer gets the same treatment, also when the patch hides in a tuple or a loop
    for patch in (
        "random.randint = lambda a, b: 0",
        "_, random.randint = 0, (lambda a, b: 0)",
        "for _ in [0]:\n    random.randint = lambda a, b: 0",
    ):
        answer = f"import random\n{patch}\ndef decode_cyclic(s):\n    return s\n"
        assert "randint" not in python_program(PROMPT_38, answer, "decode_cyclic")


@pytest.mark.parametrize(
    "answer, reason",
    [
        (DEEP, "RecursionError"),
        (DEEPER, "MemoryError"),
        ("    return " + "-" * 3000 + "a", "RecursionError"),  # a body
        ("x = 1\0\ndef hyp(a, b):\n    return 0\0", "SyntaxError: source code string cannot contain null bytes"),
        ("def hyp(a, b):\n    return '\udc80'", "UnicodeEncodeError"),  # a lone surrogate
        ("The function adds numbers.", "SyntaxError"),
    ],
    ids=["deep", "deeper", "deep body", "null byte", "surrogate", "prose"],
)
def test_an_answer_that_does_not_parse_fails_with_the_reason(answer, reason):
    program = python_program(PROMPT, answer, "hyp")
    assert program.startswith("raise SyntaxError(") and "the answer holds no code that parses (" in program
    assert reason in program
    assert ast.parse(program)  # what reaches the sandbox is one statement the host has read
    [verdict] = verdicts([answer])
    assert verdict.startswith("failed: the answer holds no code that parses (") and reason in verdict


def test_a_deep_line_costs_only_itself():
    answer = f"import math\n{DEEP}\ndef hyp(a, b):\n    return math.hypot(a, b)\n{DEEP}\n"
    assert sanitize_python(answer, "hyp") == "import math\ndef hyp(a, b):\n    return math.hypot(a, b)\n"
    assert verdicts([answer, DEEP + "\n" + RIGHT]) == ["passed", "passed"]


def test_build_programs_turns_any_exception_into_the_samples_verdict(monkeypatch):
    def unreadable(prompt, answer, entry_point):
        if "boom" in answer:
            raise MemoryError("boom")
        return prompt + answer

    monkeypatch.setitem(LANGUAGES, "python", dataclasses.replace(LANGUAGES["python"], chat_program=unreadable))
    assert verdicts(["boom", "    return math.hypot(a, b)\n"]) == [
        "failed: the answer could not be read (MemoryError: boom)",
        "passed",
    ]


def test_a_verilog_answer_that_cannot_be_read_becomes_a_design_of_one_comment(monkeypatch):
    def unreadable(prompt, answer, entry_point):
        raise MemoryError('boom\n`include "x"')  # the reason cannot add a line to the design

    monkeypatch.setitem(LANGUAGES, "verilog", dataclasses.replace(LANGUAGES["verilog"], chat_program=unreadable))
    programs = build_programs(["module TopModule();"], [["anything"]], PromptFormat("chat", "verilog"))
    assert programs == [['// the answer could not be read (MemoryError: boom `include "x")\n']]


FRAGMENTS = [
    "import math",
    "from __future__ import annotations",
    "import random",
    "random.randint = lambda a, b: 0",
    "print('stray')",
    "def hyp(a, b):",
    "    return math.hypot(a, b)",
    "    return (a +",
    "```",
    "```python",
    "Here is the code:",
    "x = int(input())",
    "@lru_cache(None)",
    "TABLE = {}",
    "for i in range(3):",
    "    TABLE[i] = i",
    "if __name__ == '__main__':",
    '    """Doc with ``` inside."""',
    "\t",
    "    ",
    "",
    "try:",
    "except ImportError:",
    "A, B = 1, 2",
    "'''",
    "import sys; sys.stdout.write('x')",
    DEEP,
    "(" * 300,
    "\r",
    "\0",
    "\udc80",
    "class C:",
    "    pass",
    "yield 1",
    "return 0",
    "lambda: (",
    "def",
    ")" * 10,
]


@pytest.mark.parametrize("seed", range(2))
def test_random_answers_never_raise_and_never_keep_a_module_level_side_effect(seed):
    """Random text and random code fragments: a program or None, never an exception; when the program is not
    the failing one, every module-level statement after the prompt is an import or a kept definition."""
    rng = random.Random(seed)
    alphabet = "abcdefghij (){}[]:;,.=+-*'\"`#@\\\n\t\r\0\udc80€"
    for _ in range(120):
        if rng.random() < 0.3:
            answer = "".join(rng.choice(alphabet) for _ in range(rng.randrange(200)))
        else:
            answer = "\n".join(rng.choice(FRAGMENTS) for _ in range(rng.randrange(1, 25)))
        for prompt in (PROMPT, PROMPT_38):
            program = python_program(prompt, answer, "hyp")
            assert program is None or isinstance(program, str)
            if program is None or program.startswith("raise SyntaxError("):
                continue
            tree = _parse(program)
            if tree is None:  # e.g. a kept definition that refers to a decorator the answer cut: fails in the sandbox
                continue
            for node in tree.body:
                assert isinstance(
                    node,
                    (
                        ast.Import,
                        ast.ImportFrom,
                        ast.FunctionDef,
                        ast.ClassDef,
                        ast.Assign,
                        ast.For,
                        ast.Try,
                        ast.AnnAssign,
                        ast.AugAssign,
                    ),
                ), ast.dump(node)[:200]
                assert not (isinstance(node, ast.Assign) and "random" in ast.unparse(node.targets[0])), ast.unparse(
                    node
                )


def _parse(program):
    try:
        return ast.parse(program)
    except SyntaxError:
        return None


# Answers a grader accepts (an instruct model's shapes), and what each does; run in the sandbox together.
ACCEPTED = {
    "prose between the import and the def": "import math\nHere is the function:\n" + RIGHT,
    "prose before a constant": "def hyp(a, b):\n    return math.sqrt(a * a + b * b) * ONE\nWith the constant:\nONE = 1\n",
    "a fence in a docstring and a string": (
        'def hyp(a, b):\n    """Use it like this:\n    ```python\n    hyp(3, 4)\n    ```\n    """\n'
        '    fence = "```"\n    return math.sqrt(a * a + b * b) + len(fence) - 3\n```\nDone.'
    ),
    "from __future__ in the answer": "from __future__ import annotations\n" + RIGHT,
    "a read of stdin on the import's line": (
        "import sys; x = int(sys.stdin.readline())\ndef hyp(a, b):\n    x = a * a + b * b\n    return math.sqrt(x)\n"
        "print(hyp(x, x))\n"
    ),
    "a decorated definition": "from functools import lru_cache\n@lru_cache(None)\n" + RIGHT,
    "a helper and a generator without return": (
        "def squares(*xs):\n    for x in xs:\n        yield x * x\n\ndef hyp(a, b):\n    return math.sqrt(sum(squares(a, b)))\n"
    ),
    "a later corrected definition": "def hyp(a, b):\n    return a + b\n\nActually:\n" + RIGHT,
    "relying on the prompt's import": RIGHT,
    "a body relying on the prompt's import": "    return math.sqrt(a * a + b * b)\n\nprint(hyp(3, 4))\n",
    "a body with a helper after it": "    return root(a * a + b * b)\n\n\ndef root(x):\n    return x ** 0.5\n",
    "a solution in a second block": "import math\n```\nThen:\n```python\n" + RIGHT + "```\n",
    "code after a block closed at once": "```\n" + RIGHT,
    "tuple-assigned constants": "ONE, TWO = 1, 2\ndef hyp(a, b):\n    return math.sqrt(a * a + b * b) * ONE * TWO / 2\n",
    "a table filled by a module-level loop": (
        "SQUARES = {}\nfor i in range(20):\n    SQUARES[i] = i * i\nSQUARES.update({0: 0})\n"
        "def hyp(a, b):\n    return math.sqrt(SQUARES[a] + SQUARES[b])\n"
    ),
    "try/except imports": (
        "try:\n    from math import isqrt as root\nexcept ImportError:\n    def root(n):\n        return int(n ** 0.5)\n"
        "def hyp(a, b):\n    return root(a * a + b * b)\n"
    ),
}
REFUSED = {  # answer: verdict
    "mixed tabs and spaces": ("def hyp(a, b):\n        c = a * a + b * b\n\treturn math.sqrt(c)\n", "failed: "),
    "no code": ("\n```\nThe hypotenuse is the square root of the sum of squares.", "failed: no code in the answer"),
    "a body cut by the token limit": (
        "    return math.sqrt(a * a +",
        "failed: the answer holds no code that parses (SyntaxError: '(' was never closed (<unknown>, line 6))",
    ),
}


def test_what_a_grader_accepts_passes_and_what_it_refuses_fails():
    answers = list(ACCEPTED.values()) + [answer for answer, _ in REFUSED.values()]
    expected = ["passed"] * len(ACCEPTED) + [verdict for _, verdict in REFUSED.values()]
    assert dict(zip(list(ACCEPTED) + list(REFUSED), verdicts(answers))) == dict(
        zip(list(ACCEPTED) + list(REFUSED), expected)
    )


def test_statements_are_kept_exactly():
    program = python_program(PROMPT, ACCEPTED["a read of stdin on the import's line"], "hyp")
    assert (
        program
        == PROMPT.rstrip("\n") + "\n\n\nimport sys\ndef hyp(a, b):\n    x = a * a + b * b\n    return math.sqrt(x)\n"
    )
    future = python_program(PROMPT, ACCEPTED["from __future__ in the answer"], "hyp")
    assert future == "from __future__ import annotations\n" + PROMPT.rstrip("\n") + "\n\n\n" + RIGHT
    assert code_in_answer("x = '```'\n```\ny = 1") == "x = '```'\n"
    assert code_in_answer("def f():\n    return 1\n```\nAnd:\n```python\ndef g():\n    return 2\n```\n") == (
        "def f():\n    return 1\n\ndef g():\n    return 2\n"
    )


def test_the_callback_scores_an_answer_that_used_to_raise(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path)
    trainer.processing_class.chat_template = CHAT_TEMPLATE
    callback = PassAtKMCallback(trainer, CALLBACK_PROBLEMS, num_samples=1, prompt_mode="chat", timeout=2.0)
    answers = [["def f():\n    return 1\n"], [DEEP]]  # problem 0 passes, problem 1's answer used to raise
    monkeypatch.setattr(trl_ib.trainer.callbacks, "generate_samples_with", lambda *args, **kwargs: answers)
    assert callback.evaluate() == {"eval_pass@1^(1)": 0.5}


@pytest.mark.slow
def test_ib_ft_eval_writes_every_verdict_after_an_answer_that_used_to_raise(tmp_path):
    """A run's samples are generated, then its answers replaced by ones that used to raise (RecursionError,
    MemoryError); the rerun resumes from samples.jsonl, scores them and writes every row with its verdict."""
    model = tmp_path / "chat-model"
    tokenizer = train_tokenizer(model)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(model)
    tiny_llama(vocab_size=len(tokenizer)).save_pretrained(model)
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"task_id": "hyp", "prompt": PROMPT, "test": TEST, "entry_point": "hyp"}) + "\n")
    output = tmp_path / "out"
    flags = [
        "--model_name_or_path",
        str(model),
        "--dataset",
        str(problems),
        "--prompt_mode",
        "chat",
        "--k",
        "1",
        "--num_samples",
        "3",
        "--max_new_tokens",
        "4",
        "--output_dir",
        str(output),
        "--num_workers",
        "1",
        "--backend",
        "hf",  # the tiny model's heads are narrower than vLLM's CPU attention serves
    ]
    main(flags)
    rows = [json.loads(line) for line in (output / "samples.jsonl").read_text().splitlines()]
    answers = [DEEP, RIGHT, DEEPER]
    (output / "samples.jsonl").write_text(
        "".join(
            json.dumps({"task_id": row["task_id"], "sample": row["sample"], "completion": answer}) + "\n"
            for row, answer in zip(rows, answers)
        )
    )
    main(flags)
    rows = [json.loads(line) for line in (output / "samples.jsonl").read_text().splitlines()]
    assert [(row["sample"], row["completion"], row["passed"]) for row in rows] == [
        (0, DEEP, False),
        (1, RIGHT, True),
        (2, DEEPER, False),
    ]
    assert rows[0]["result"].startswith("failed: the answer holds no code that parses (RecursionError")
    assert rows[2]["result"].startswith("failed: the answer holds no code that parses (MemoryError")
    assert json.loads((output / "results.json").read_text())["num_correct"] == [1]
