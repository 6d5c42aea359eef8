"""Programs from model answers: cut at stop sequences, take the code out of a chat answer, sanitize it.

Text only (the standard library), so the torch-free evaluator can use it too. A chat answer starts inside a
code block that the response prefix opened (EvalPlus's recipe), so its code runs up to the first closing fence;
an answer that closes the block at once and opens another one later gives the code of that later block.

    python_program(prompt, answer, entry_point)   # the prompt's imports and helpers + the sanitized answer
    verilog_program(text)                         # from the first `module` line, closed with `endmodule`

Both return None when the answer holds no code: the evaluator reports "failed: no code in the answer". A Python
answer that holds text but no code that parses becomes `failing_program(...)`, a program whose only statement
raises with the reason ("failed: the answer holds no code that parses (SyntaxError: ...)"): nothing the host
could not parse reaches the sandbox, where it might compile and run unsanitized (`compile` accepts expressions
nested slightly deeper than `ast.parse` does, and the host's recursion limit may differ).

Rules (what a human grader would accept decides; a case a grader could read two ways is refused):

- The code ends at the first fence outside a string literal or comment, so a fence in a docstring's example or
  in `s = "```"` does not end it. Later fenced blocks are code too (a helper in one block, the function in the
  next); a block that repeats or changes a definition overrides it, as a later definition in one block does. An
  answer that closes the opened block at once and opens none gives the text after that fence when a line of it
  starts code (`def`, `class`, `import`, `from`, `@`, `module`). With the default chat stop (`\\n```\\n`,
  `trl_ib.generation.prompting`) generation ends at the first closing fence, so a second block or code after a bare closing
  fence is never generated: the stop stays, as in EvalPlus, because nearly every answer ends there and going on
  costs prose tokens on all of them; a fence alone on a line at column 0 inside a docstring also ends
  generation, a plain stop string cannot know it is in a string.
- Parsing: the code is split into runs, left to right: from each line at column 0 that no earlier run covers,
  the longest run of lines that parses. Prose between parts of the code (an import, a prose line, the `def`;
  prose before a constant) and a tail cut mid-statement by the token limit fall between runs. Any error the
  parser raises (SyntaxError, RecursionError and MemoryError on very deep expressions, ValueError on null bytes
  or lone surrogates) only ends a run; a line that alone is too deep to parse is in no run, and the search stops
  after 20 times the code's length (at least 2 * 10**5 characters) has been parsed, so a degenerate answer
  (300 lines of `x(`) cannot stall scoring. Mixed tabs and spaces are refused where Python
  refuses them (TabError ends the run): what the lines mean depends on a tab width the answer does not state.
- Sanitizing, over the statements of all runs: imports (and `try:` blocks that only import, with fallbacks
  that import, define, assign names or pass) are kept; so is every function, class and module-level
  statement that defines or fills a name the entry point reaches (the global names each definition uses,
  scopes resolved by `symtable`, so a local `x` does not reach a module-level `x = input()`): assignments to
  names (`A, B = 1, 2` too), item and attribute stores and method calls on names the answer defines
  (`TABLE[i] = ...`, `CACHE.update(...)`), and `for`/`while`/`if` blocks made only of those (a table filled
  by a loop). Everything else goes: prints, asserts, examples, `if __name__` blocks, reads of stdin, and any
  store into what the answer did not define (`random.randint = ...` patches a module the tests use). Each
  statement is kept as written, from its first decorator to its end, not the rest of its line, so
  `import sys; x = int(sys.stdin.readline())` keeps only the import. Definitions are kept whatever they
  contain (helpers and generators without `return`, decorated ones) and in order, so a later corrected
  definition wins. `from __future__` imports go to the top of the program.
- Sanitizing is against a model's stray statements, not against a candidate written to cheat: what kept
  statements evaluate when they run (decorators, default values, class bodies, assigned values) still runs
  before the tests (`trl_ib.code_eval.execution.python` lists what the sandbox does not defeat).
- The program is the prompt, then the sanitized answer, so the prompt's imports and helpers stay available
  and the answer's definition of the entry point replaces the prompt's stub. An answer that does not define
  the entry point is read as the body the prompt asks for: the prompt and the answer's lines up to the end of
  the function they complete are kept as written, and what follows is sanitized like a full answer.
"""

import ast
import re
import symtable
from collections.abc import Sequence
from typing import NamedTuple

FENCE = "```"
# A fence, or a comment or string literal matched whole so that a fence inside one is skipped over.
_FENCE_OR_SKIPPED = re.compile(
    r"(?P<fence>```)|#[^\n]*"
    r"|'''(?:\\.|[^\\])*?(?:'''|\Z)|\"\"\"(?:\\.|[^\\])*?(?:\"\"\"|\Z)"
    r"|'(?:\\.|[^\\'\n])*'?|\"(?:\\.|[^\\\"\n])*\"?",
    re.DOTALL,
)
_OPENING_FENCE = re.compile(r"```[^\n`]*\n")
_STARTS_CODE = re.compile(r"^(?:async def |def |class |import |from |@|module\b)", re.MULTILINE)
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_IMPORTS = (ast.Import, ast.ImportFrom)
_PARSE_BUDGET = 2 * 10**5  # characters parsed per answer at least, whatever its length


def cut_at_stop(text: str, stop_sequences: Sequence[str]) -> str:
    """`text` up to (not including) the earliest of `stop_sequences`; all of it when none occurs."""
    cuts = [index for index in (text.find(stop) for stop in stop_sequences) if index != -1]
    return text[: min(cuts)] if cuts else text


def _split_at_fence(text: str) -> tuple[str, str | None]:
    """`text` before its first fence outside a string literal or comment, and the text after that fence (None
    when there is no such fence)."""
    for match in _FENCE_OR_SKIPPED.finditer(text):
        if match["fence"]:
            return text[: match.start()], text[match.end() :]
    return text, None


def _fenced_blocks(text: str) -> list[str]:
    """The contents of the fenced blocks opened in `text`, each up to its closing fence (or the end)."""
    blocks = []
    while (opening := _OPENING_FENCE.search(text)) is not None:
        block, rest = _split_at_fence(text[opening.end() :])
        blocks.append(block)
        if rest is None:
            break
        text = rest
    return blocks


def code_in_answer(answer: str) -> str:
    """The code of a chat answer that starts inside an open code block: up to the closing fence and the content
    of any later fenced block, or, when the part before the closing fence is blank, the later blocks alone (the
    text after that fence when no block follows and a line of it starts code). "" when there is none."""
    head, rest = _split_at_fence(answer)
    if rest is None:
        return head
    if head.strip():
        return "\n".join([head, *_fenced_blocks(rest)])
    if not rest.startswith(("\n", "\r")):
        rest = FENCE + rest  # a fence with a language tag opens a block rather than closing one
    blocks = _fenced_blocks(rest)
    if blocks:
        return "\n".join(blocks)
    return rest if _STARTS_CODE.search(rest) else ""


def failing_program(language: str, reason: str) -> str:
    """A program that fails with `reason` as its verdict text (Python: "failed: <reason>"); for Verilog a
    design holding only the reason as a comment, which fails to compile."""
    if language == "python":
        return f"raise SyntaxError({reason!r})\n"
    return "// " + " ".join(reason.split()) + "\n"


class _Run(NamedTuple):
    start: int  # index of its first line
    end: int  # index after its last line
    tree: ast.Module


class _Statement(NamedTuple):
    node: ast.stmt
    source: str  # as written: from its first decorator to its end (not the rest of its last line)
    line: int  # index of its first line in the code
    end: tuple[int, int]  # (line index, byte offset in that line) of its end


def _parse(source: str) -> ast.Module | Exception:
    """`ast.parse(source)`, or the exception it raised: on hostile text the parser raises more than
    SyntaxError (RecursionError or MemoryError on deep expressions, ValueError on null bytes or surrogates)."""
    try:
        return ast.parse(source)
    except Exception as error:  # noqa: BLE001  any of them only means "this text does not parse"
        return error


def _runs(lines: list[str]) -> tuple[list[_Run], Exception | None]:
    """The parsable runs of `lines` (see the module docstring) and the error of the first parse that failed."""
    errors = [_parse(line) for line in lines]
    # A line that alone is too deep to parse (or holds a null byte) is in no run: runs stop before it.
    walls = [index for index, error in enumerate(errors) if not isinstance(error, (ast.Module, SyntaxError))]
    first_error = errors[walls[0]] if walls else None
    budget = max(_PARSE_BUDGET, 20 * sum(map(len, lines)))  # characters; a degenerate answer cannot stall scoring
    runs, start = [], 0
    while start < len(lines) and budget > 0:
        limit = next((wall for wall in walls if wall >= start), len(lines))
        end = limit if lines[start][:1].strip() else start  # blank or indented: no run starts here
        while end > start and budget > 0:
            if not lines[end - 1].strip():
                end -= 1
                continue
            source = "\n".join(lines[start:end])
            budget -= len(source)
            tree = _parse(source)
            if isinstance(tree, ast.Module):
                runs.append(_Run(start, end, tree))
                break
            first_error = first_error or tree
            # A SyntaxError on line L fails every run from `start` that includes line L: skip to those before it.
            line = getattr(tree, "lineno", None)
            end = start + line - 1 if isinstance(line, int) and 1 <= line <= end - start else end - 1
        start = runs[-1].end if runs and runs[-1].start == start else start + 1
    return runs, first_error


def _statement(lines: list[str], run: _Run, node: ast.stmt) -> _Statement:
    decorators = getattr(node, "decorator_list", [])
    first = decorators[0].lineno if decorators else node.lineno
    column = 0 if decorators else node.col_offset  # offsets count UTF-8 bytes
    chunk = [line.encode() for line in lines[run.start + first - 1 : run.start + node.end_lineno]]
    chunk[-1] = chunk[-1][: node.end_col_offset]
    chunk[0] = chunk[0][column:]
    source = b"\n".join(chunk).decode()
    return _Statement(node, source, run.start + first - 1, (run.start + node.end_lineno - 1, node.end_col_offset))


def _statements(lines: list[str]) -> tuple[list[_Statement], list[_Run], Exception | None]:
    runs, error = _runs(lines)
    return [_statement(lines, run, node) for run in runs for node in run.tree.body], runs, error


def _lines(code: str) -> list[str]:
    return code.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # "\r" ends a line for the parser too


def _root(node: ast.expr) -> str | None:
    """ "TABLE" for `TABLE[i].x`; None when the chain does not start at a name (a call's result, ...)."""
    while isinstance(node, (ast.Subscript, ast.Attribute)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _target_roots(target: ast.expr, own: set[str]) -> set[str] | None:
    """The names a store into `target` binds or fills; None when it stores into something not in `own`."""
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, ast.Starred):
        return _target_roots(target.value, own)
    if isinstance(target, (ast.Tuple, ast.List)):
        roots = [_target_roots(element, own) for element in target.elts]
        return None if None in roots else set().union(*roots)
    root = _root(target) if isinstance(target, (ast.Subscript, ast.Attribute)) else None
    return {root} if root in own else None


def _fills(node: ast.stmt, own: set[str]) -> set[str]:
    """The names a module-level statement defines or fills (see the module docstring); empty for a statement
    that is dropped whatever the entry point reaches."""
    if isinstance(node, _DEFINITIONS):
        return {node.name}
    if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        roots = [_target_roots(target, own) for target in targets]
        return set() if None in roots else set().union(*roots)
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Attribute):
        root = _root(node.value.func.value)
        return {root} if root in own else set()
    if isinstance(node, (ast.For, ast.While, ast.If)):
        names = _target_roots(node.target, set()) if isinstance(node, ast.For) else set()
        skipped = (ast.Pass, ast.Break, ast.Continue)
        inner = [_fills(s, own) for s in node.body + node.orelse if not isinstance(s, skipped)]
        return set() if names is None or not all(inner) else names.union(*inner)
    return set()


def _is_import_guard(node: ast.stmt) -> bool:
    """`try: import x` whose handlers, else and finally only import, define, assign names or pass."""
    if not isinstance(node, ast.Try) or not all(isinstance(inner, _IMPORTS) for inner in node.body):
        return False
    fallbacks = [inner for handler in node.handlers for inner in handler.body] + node.orelse + node.finalbody
    return all(
        isinstance(inner, (*_IMPORTS, *_DEFINITIONS, ast.Pass))
        or isinstance(inner, ast.Assign)
        and all(isinstance(target, ast.Name) for target in inner.targets)
        for inner in fallbacks
    )


def _global_names(statement: _Statement) -> set[str]:
    """The module-level names `statement` uses: those its own level reads and the globals of its scopes."""
    try:
        tables, names = [symtable.symtable(statement.source, "<answer>", "exec")], set()
    except Exception:  # noqa: BLE001  a statement symtable rejects does not compile: any over-estimate will do
        return {node.id for node in ast.walk(statement.node) if isinstance(node, ast.Name)}
    while tables:
        table = tables.pop()
        top = table.get_type() == "module"
        symbols = table.get_symbols()
        names |= {symbol.get_name() for symbol in symbols if symbol.is_referenced() and (top or symbol.is_global())}
        tables += table.get_children()
    return names


def _kept(statements: list[_Statement], entry_point: str | None) -> list[bool]:
    """For each statement, whether the sanitized program keeps it (see the module docstring)."""
    imported = {
        (alias.asname or alias.name).split(".")[0]
        for statement in statements
        if isinstance(statement.node, _IMPORTS)
        for alias in statement.node.names
    }
    own = {name for statement in statements for name in _fills(statement.node, set())} - imported
    filled = [_fills(statement.node, own) for statement in statements]
    always = [isinstance(statement.node, _IMPORTS) or _is_import_guard(statement.node) for statement in statements]
    if entry_point is None:
        return [keep or bool(names) for keep, names in zip(always, filled)]
    uses = [_global_names(statement) for statement in statements]
    reached, frontier = set(), [entry_point] + [name for keep, names in zip(always, uses) if keep for name in names]
    while frontier:
        name = frontier.pop()
        if name not in reached:
            reached.add(name)
            frontier += [used for names, needs in zip(filled, uses) if name in names for used in needs]
    return [keep or bool(names & reached) for keep, names in zip(always, filled)]


def _is_future(statement: _Statement) -> bool:
    return isinstance(statement.node, ast.ImportFrom) and statement.node.module == "__future__"


def _joined(statements: list[_Statement]) -> str:
    return "".join(statement.source + "\n" for statement in statements)


def sanitize_python(code: str, entry_point: str | None) -> str | None:
    """Imports, and the functions, classes and module-level statements that `entry_point` reaches (all of them
    when `entry_point` is None), each as written, one after the other; everything else (prints, asserts,
    examples, `if __name__` blocks, prose) is dropped. None when nothing parses or `entry_point` is not defined."""
    statements, _, _ = _statements(_lines(code))
    kept = _sanitized(statements, entry_point)
    return None if kept is None else _joined(kept)


def _sanitized(statements: list[_Statement], entry_point: str | None) -> list[_Statement] | None:
    defined = {name for statement in statements for name in _fills(statement.node, set())}
    if not statements or entry_point is not None and entry_point not in defined:
        return None
    return [statement for statement, keep in zip(statements, _kept(statements, entry_point)) if keep]


def python_program(prompt: str, answer: str, entry_point: str | None) -> str | None:
    """The program to test for a chat answer to a HumanEval-style `prompt` (a signature with a docstring).

    The sanitized answer follows the prompt (when the prompt parses), `from __future__` imports first. An
    answer that does not define `entry_point` is read as the body the prompt asks for (module docstring).
    None when the answer has no code; `failing_program` with the reason when none of its code parses.
    """
    code = code_in_answer(answer)
    if not code.strip():
        return None
    statements, _, error = _statements(_lines(code))
    kept = _sanitized(statements, entry_point)
    prompt_parses = isinstance(_parse(prompt), ast.Module)
    if kept is not None:
        head = prompt.rstrip("\n") + "\n\n\n" if prompt_parses else ""
        return _with_futures_first(kept, head)
    if prompt_parses:
        return _body_program(prompt, code, entry_point)
    if statements:
        return failing_program("python", f"the answer does not define {entry_point!r}")
    return _unreadable(error)


def _unreadable(error: Exception | None) -> str | None:
    """None for code of comments and blank lines only (`error` None), else a program failing with the reason."""
    if error is None:
        return None
    return failing_program("python", f"the answer holds no code that parses ({type(error).__name__}: {error})")


def _with_futures_first(statements: list[_Statement], head: str) -> str:
    futures = [statement for statement in statements if _is_future(statement)]
    return _joined(futures) + head + _joined([statement for statement in statements if not _is_future(statement)])


def _body_program(prompt: str, code: str, entry_point: str | None) -> str | None:
    """prompt + `code` read as the body of the function the prompt ends with: the prompt and the lines that
    complete its last statement as written, then the rest of `code` sanitized."""
    lines, prompt_lines = _lines(prompt + code), _lines(prompt)
    if not prompt_lines[-1]:
        prompt_lines.pop()  # the prompt ends with a newline: the answer starts on a line of its own
    filled = [index for index, line in enumerate(prompt_lines) if line.strip()]
    statements, runs, error = _statements(lines)
    completed = sum(statement.line <= filled[-1] for statement in statements) if filled else 0
    if not (completed and runs[0].start <= filled[0] and runs[0].end > filled[-1]):
        return _unreadable(error)  # the answer breaks the prompt (e.g. its first line does not continue it)
    end_line, end_byte = statements[completed - 1].end
    if end_line <= filled[-1] and len(statements) == completed:
        return _unreadable(error)
    keep = _kept(statements, entry_point)
    rest = [statement for statement, kept in zip(statements[completed:], keep[completed:]) if kept]
    body = "\n".join(lines[:end_line] + [lines[end_line].encode()[:end_byte].decode()]) + "\n"
    return _with_futures_first(rest, body + "\n\n" if any(not _is_future(s) for s in rest) else body)


def verilog_program(text: str) -> str | None:
    """The design in `text` (a prompt + completion, or a chat answer): from the first line that opens a `module`
    up to its `endmodule`, which is added when generation stopped at it. None when no module is opened."""
    start = re.search(r"^[ \t]*module\b", text, re.MULTILINE)
    if start is None:
        return None
    design = cut_at_stop(text[start.start() :], [FENCE, "endmodule"])
    return design.rstrip() + "\nendmodule\n"
