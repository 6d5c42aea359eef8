"""Programs from model answers: cut at stop sequences, take the code out of a chat answer, sanitize it.

Text only (the standard library), so the torch-free evaluator can use it too. A chat answer starts inside a
code block that the response prefix opened (EvalPlus's recipe), so its code runs up to the first closing fence;
an answer that closes the block at once and opens another one later gives the code of that later block.

    python_program(prompt, answer, entry_point)   # the prompt's imports and helpers + the sanitized answer
    verilog_program(text)                         # from the first `module` line, closed with `endmodule`

Both return None when the answer holds no code: the evaluator reports "failed: no code in the answer".
"""

import ast
import re
from collections.abc import Sequence

FENCE = "```"
_FENCED_BLOCK = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL)
_CODE_START = ("def ", "async def ", "class ", "import ", "from ", "@")
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def cut_at_stop(text: str, stop_sequences: Sequence[str]) -> str:
    """`text` up to (not including) the earliest of `stop_sequences`; all of it when none occurs."""
    cuts = [index for index in (text.find(stop) for stop in stop_sequences) if index != -1]
    return text[: min(cuts)] if cuts else text


def code_in_answer(answer: str) -> str:
    """The code of a chat answer that starts inside an open code block: up to the closing fence, or, when that
    part is blank, the content of the next fenced block. "" when there is neither."""
    head, fence, rest = answer.partition(FENCE)
    if head.strip() or not fence:
        return head
    if not rest.startswith(("\n", "\r")):
        rest = FENCE + rest  # a fence with a language tag opens a block rather than closing one
    block = _FENCED_BLOCK.search(rest)
    return block[1] if block else ""


def _parse_longest(code: str) -> tuple[ast.Module, list[str]] | None:
    """The AST of the longest run of lines of `code` that parses (prose before it or a tail cut mid-statement
    by the token limit is dropped), with those lines; None when no line that starts code parses."""
    lines = code.split("\n")
    starts = [0] + [i for i, line in enumerate(lines) if i and line.startswith(_CODE_START)]
    for start in starts:
        for end in range(len(lines), start, -1):
            try:
                return ast.parse("\n".join(lines[start:end])), lines[start:end]
            except SyntaxError:
                continue
    return None


def _defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, _DEFINITIONS):
        return [node.name]
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    return [target.id for target in targets if isinstance(target, ast.Name)]


def sanitize_python(code: str, entry_point: str | None) -> str | None:
    """Imports, and the functions, classes and module-level assignments that `entry_point` reaches (all of them
    when `entry_point` is None), as written; everything else (prints, asserts, examples, `if __name__` blocks,
    prose) is dropped. None when nothing parses or `entry_point` is not defined."""
    parsed = _parse_longest(code)
    if parsed is None:
        return None
    tree, lines = parsed
    definitions = {name: node for node in tree.body for name in _defined_names(node)}
    if entry_point is not None and entry_point not in definitions:
        return None
    reached, frontier = set(definitions) if entry_point is None else set(), [entry_point] if entry_point else []
    while frontier:
        name = frontier.pop()
        if name in reached or name not in definitions:
            continue
        reached.add(name)
        frontier += [node.id for node in ast.walk(definitions[name]) if isinstance(node, ast.Name)]
    kept = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) or reached.intersection(_defined_names(node)):
            first = min([node.lineno] + [decorator.lineno for decorator in getattr(node, "decorator_list", [])])
            kept.append("\n".join(lines[first - 1 : node.end_lineno]))
    return "\n".join(kept) + "\n"


def python_program(prompt: str, answer: str, entry_point: str | None) -> str | None:
    """The program to test for a chat answer to a HumanEval-style `prompt` (a signature with a docstring).

    The sanitized answer follows the prompt, so the prompt's imports and helper functions stay available and the
    answer's definition of `entry_point` replaces the prompt's stub. An answer that does not define `entry_point`
    is read as the body the prompt asks for: prompt + answer. None when the answer has no code.
    """
    code = code_in_answer(answer)
    if not code.strip():
        return None
    sanitized = sanitize_python(code, entry_point)
    if sanitized is None:
        return prompt + code
    try:
        ast.parse(prompt)
    except SyntaxError:
        return sanitized
    return prompt.rstrip("\n") + "\n\n\n" + sanitized


def verilog_program(text: str) -> str | None:
    """The design in `text` (a prompt + completion, or a chat answer): from the first line that opens a `module`
    up to its `endmodule`, which is added when generation stopped at it. None when no module is opened."""
    start = re.search(r"^[ \t]*module\b", text, re.MULTILINE)
    if start is None:
        return None
    design = cut_at_stop(text[start.start() :], [FENCE, "endmodule"])
    return design.rstrip() + "\nendmodule\n"
