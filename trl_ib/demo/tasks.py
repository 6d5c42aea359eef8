"""A synthetic code-generation task family with executable unit tests, in HumanEval layout.

A problem asks for `f(x)` that applies a chain of integer operations in order, specified in words:

    def f(x):
        \"\"\"Take an integer x, add 3 to it, then multiply it by 2, and return the result.\"\"\"
        acc = x + 3        <- canonical_solution (the completion), from the newline after the docstring on
        acc = acc * 2
        return acc

The prompt ends at the docstring's closing quotes, not at the newline after them: byte-level BPE tokenizers (the
real model's included) merge a newline with the indentation that follows, so a prompt ending in "\\n" would
tokenize differently alone than in front of its solution.

Operations come from a small grammar (`OPERATIONS`, some with an integer constant). Each canonical solution names
its variable at random from `VARIABLES`: like the naming choices of real code, this is instance-specific
information that the tests do not check and the prompt does not determine, so it can only be memorized.

The ordered pairs of distinct operations are split once per seed into training, validation and held-out pairs
(each operation stays in training in both positions). Training problems (D_code) and fresh reference problems chain
two or three operations (`TRAIN_LENGTHS`) through training pairs only. Validation and held-out problems chain four
or five (`TEST_LENGTHS`), and at least one of their consecutive pairs is new (validation pairs for validation
problems, held-out pairs for held-out ones, never the other set): solving them needs a longer composition than any
training solution, from operations seen in training. This is length generalization: a model that has memorized
D_code's two- and three-line shapes stops early and fails. Validation problems choose hyper-parameters, held-out
problems measure the result. All prompts are distinct.

    from trl_ib.demo.tasks import make_task
    task = make_task(seed=0)
    task.train[0]["prompt"], task.train[0]["canonical_solution"], task.train[0]["test"], task.train[0]["entry_point"]
"""

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

# name -> (words, expression, allowed constants or None); "{v}" is the operand, "{c}" the constant
OPERATIONS = {
    "add": ("add {c} to it", "{v} + {c}", range(1, 10)),
    "subtract": ("subtract {c} from it", "{v} - {c}", range(1, 10)),
    "multiply": ("multiply it by {c}", "{v} * {c}", range(2, 10)),
    "floordiv": ("divide it by {c}, rounding down", "{v} // {c}", range(2, 10)),
    "modulo": ("take its remainder modulo {c}", "{v} % {c}", range(2, 10)),
    "square": ("square it", "{v} * {v}", None),
    "negate": ("negate it", "-{v}", None),
    "absolute": ("take its absolute value", "abs({v})", None),
}
VARIABLES = ("y", "n", "r", "t", "acc", "out", "val", "res")
TEST_INPUTS = (-7, -2, 0, 1, 4, 11)
ENTRY_POINT = "f"
TRAIN_LENGTHS = (2, 3)  # operations per D_code / reference problem
TEST_LENGTHS = (4, 5)  # operations per validation / held-out problem


@dataclass
class Task:
    """Problems as HumanEval dicts (task_id, prompt, canonical_solution, test, entry_point, operations)."""

    train: list[dict]  # D_code
    reference: list[dict]  # fresh problems like D_code, for the Min-K% comparison
    validation: list[dict]  # longer chains through validation pairs, for choosing hyper-parameters
    held_out: list[dict]  # longer chains through held-out pairs, for Pass@k^(m)
    validation_pairs: list[tuple[str, str]]
    held_out_pairs: list[tuple[str, str]]


def make_problem(task_id: str, steps: list[tuple[str, int | None]], variable: str) -> dict:
    """One HumanEval problem from (operation, constant) steps; the test asserts f on TEST_INPUTS."""
    words = [OPERATIONS[name][0].format(c=c) for name, c in steps]
    operands = ["x"] + [variable] * (len(steps) - 1)
    lines = [f"{variable} = " + OPERATIONS[name][1].format(v=v, c=c) for (name, c), v in zip(steps, operands)]
    prompt = f'def {ENTRY_POINT}(x):\n    """Take an integer x, {", then ".join(words)}, and return the result."""'
    canonical_solution = "".join(f"\n    {line}" for line in lines) + f"\n    return {variable}\n"
    namespace: dict = {}
    exec(prompt + canonical_solution, namespace)  # our own generated code: the expected outputs
    asserts = "".join(f"    assert candidate({x}) == {namespace[ENTRY_POINT](x)}\n" for x in TEST_INPUTS)
    return {
        "task_id": task_id,
        "prompt": prompt,
        "canonical_solution": canonical_solution,
        "test": f"def check(candidate):\n{asserts}",
        "entry_point": ENTRY_POINT,
        "operations": [name for name, _ in steps],
    }


def split_pairs(
    rng: random.Random, num_validation: int, num_held_out: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """
    (training, validation, held-out) pairs of distinct operations, disjoint; every operation stays in training in
    both positions.
    """
    pairs = list(itertools.permutations(OPERATIONS, 2))
    most = len(pairs) - 2 * len(OPERATIONS)
    if num_validation < 1 or num_held_out < 1 or num_validation + num_held_out > most:
        raise ValueError(
            f"num_validation_pairs={num_validation}, num_held_out_pairs={num_held_out}: each must be >= 1 and "
            f"their sum <= {most}."
        )
    while True:
        rng.shuffle(pairs)
        held_out, validation = pairs[:num_held_out], pairs[num_held_out : num_held_out + num_validation]
        train = pairs[num_held_out + num_validation :]
        if {a for a, _ in train} == {b for _, b in train} == set(OPERATIONS):
            return sorted(train), sorted(validation), sorted(held_out)


def consecutive_pairs(operations: Sequence[str]) -> set[tuple[str, str]]:
    """The ordered pairs of consecutive operations: ("add", "square", "negate") -> {(add, square), (square, negate)}."""
    return set(zip(operations, operations[1:]))


def sample_chains(
    rng: random.Random,
    lengths: tuple[int, ...],
    new_pairs: list[tuple[str, str]],
    train_pairs: list[tuple[str, str]],
    count: int,
    prefix: str,
    taken: set[str],
) -> list[dict]:
    """
    `count` problems chaining operations, their lengths spread evenly over `lengths`, with random constants and
    variable names. Every consecutive pair of a chain is in `train_pairs` or `new_pairs`; with `new_pairs`, at least
    one is in `new_pairs`. Prompts in `taken` are skipped (updated): two problems never share a prompt.
    """
    new, known = set(new_pairs), set(new_pairs) | set(train_pairs)
    chains = {
        length: [
            chain
            for chain in itertools.product(OPERATIONS, repeat=length)
            if (pairs := consecutive_pairs(chain)) <= known and (not new or pairs & new)
        ]
        for length in lengths
    }
    for length, found in chains.items():
        if not found:
            raise ValueError(
                f"{prefix} lengths={lengths}: no chain of {length} operations has its consecutive pairs among the "
                f"allowed ones{' with at least one new pair' if new else ''}; use longer chains."
            )
    problems = []
    for _ in range(100 * count):
        if len(problems) == count:
            break
        chain = rng.choice(chains[lengths[len(problems) % len(lengths)]])
        steps = [(name, rng.choice(OPERATIONS[name][2]) if OPERATIONS[name][2] else None) for name in chain]
        problem = make_problem(f"{prefix}/{len(problems)}", steps, rng.choice(VARIABLES))
        if problem["prompt"] not in taken:
            taken.add(problem["prompt"])
            problems.append(problem)
    if len(problems) < count:
        raise ValueError(f"num_{prefix}={count}: only {len(problems)} distinct problems were drawn.")
    return problems


def make_task(
    seed: int = 0,
    num_train: int = 128,
    num_reference: int = 128,
    num_validation: int = 60,
    num_held_out: int = 60,
    num_validation_pairs: int = 8,
    num_held_out_pairs: int = 12,
    train_lengths: tuple[int, ...] = TRAIN_LENGTHS,
    test_lengths: tuple[int, ...] = TEST_LENGTHS,
) -> Task:
    """
    The task family of `seed`: same seed, same problems. Counts are problems; pairs are ordered operation pairs;
    lengths are numbers of operations per problem (training and reference; validation and held-out).
    """
    rng = random.Random(seed)
    train_pairs, validation_pairs, held_out_pairs = split_pairs(rng, num_validation_pairs, num_held_out_pairs)
    taken: set[str] = set()
    return Task(
        train=sample_chains(rng, train_lengths, [], train_pairs, num_train, "train", taken),
        reference=sample_chains(rng, train_lengths, [], train_pairs, num_reference, "reference", taken),
        validation=sample_chains(
            rng, test_lengths, validation_pairs, train_pairs, num_validation, "validation", taken
        ),
        held_out=sample_chains(rng, test_lengths, held_out_pairs, train_pairs, num_held_out, "held_out", taken),
        validation_pairs=validation_pairs,
        held_out_pairs=held_out_pairs,
    )


def sft_rows(problems: list[dict]) -> list[dict]:
    """SFT / Min-K% rows: the HumanEval prompt and its canonical solution as the completion."""
    return [{"prompt": p["prompt"], "completion": p["canonical_solution"]} for p in problems]
