"""The unbiased Pass@k^(m) estimator, computed exactly.

Draw k of a problem's n samples without replacement; X of them pass. Pass@k^(m) = P(X >= m), a
hypergeometric tail:

    Pass@k^(m) = sum_{j=m}^{min(c,k)} C(c, j) * C(n - c, k - j) / C(n, k)

m = 1 is the usual unbiased pass@k, m = k asks for all k samples to pass. Everything is computed with
Python integers and `fractions.Fraction`, so the value is the correctly rounded float of the exact
rational for any n (C(1000, 500) has 300 digits and is no problem); there is no Monte Carlo anywhere.
The metric module, `ib-ft eval` and `PassAtKMCallback` all report numbers from `pass_at_k_m_table`.
"""

from collections.abc import Sequence
from fractions import Fraction
from math import comb

import numpy as np


def _fractions(num_samples: int | Sequence[int], num_correct: Sequence[int], k: int, m: int) -> list[Fraction]:
    """Exact per-problem Pass@k^(m) after checking every input."""
    num_correct = [int(c) for c in num_correct]
    if isinstance(num_samples, (int, np.integer)):
        num_samples = [int(num_samples)] * len(num_correct)
    num_samples = [int(n) for n in num_samples]
    if len(num_samples) != len(num_correct):
        raise ValueError(
            f"num_samples has {len(num_samples)} entries but num_correct has {len(num_correct)}; "
            "give one n per problem or a single int"
        )
    values = []
    if not _is_int(k) or k < 1:
        raise ValueError(f"k={k!r} is invalid; k must be an integer >= 1")
    if not _is_int(m):
        raise ValueError(f"m={m!r} is invalid; m must be an integer 1 <= m <= k")
    for problem, (n, c) in enumerate(zip(num_samples, num_correct)):
        where = f" (problem {problem})"
        if n < k:
            raise ValueError(f"num_samples n={n} is smaller than k={k}{where}; Pass@k^(m) needs n >= k samples")
        if not 1 <= m <= k:
            raise ValueError(f"m={m} is invalid for k={k}; m must satisfy 1 <= m <= k")
        if not 0 <= c <= n:
            raise ValueError(f"num_correct c={c} is invalid for n={n}{where}; c must satisfy 0 <= c <= n")
        tail = sum(comb(c, j) * comb(n - c, k - j) for j in range(m, min(c, k) + 1))
        values.append(Fraction(tail, comb(n, k)))
    return values


def pass_at_k_m(num_samples: int | Sequence[int], num_correct: Sequence[int], k: int, m: int) -> np.ndarray:
    """Per-problem unbiased Pass@k^(m).

    Args:
        num_samples: n, samples drawn per problem; one int for all problems or one per problem.
        num_correct: c, passing samples per problem, shape (num_problems,).
        k: samples per attempt, 1 <= k <= n.
        m: samples of the k that must pass, 1 <= m <= k.

    Returns:
        float64 array of shape (num_problems,), each value in [0, 1].
    """
    return np.array([float(value) for value in _fractions(num_samples, num_correct, k, m)], dtype=np.float64)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def resolve_m(m: int | str, k: int) -> int:
    """`m` as given by a user: an int, a string of digits, or the string "k" meaning m = k."""
    if m == "k":
        return k
    if _is_int(m) or (isinstance(m, str) and m.isdigit()):
        return int(m)
    raise ValueError(f"m={m!r} is invalid; give an integer 1 <= m <= k or the string 'k' (meaning m = k)")


def _values(name: str, values) -> list:
    """`values` as a non-empty list; a str or a lone number is refused (it would be read character by character)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)) or len(values) == 0:
        example = '[1, "k"]' if name == "m" else "[1, 10]"
        raise ValueError(f"{name}={values!r} is invalid; give a non-empty list, e.g. {name}={example}")
    return list(values)


def pass_at_k_m_table(
    num_samples: int | Sequence[int],
    num_correct: Sequence[int],
    k: Sequence[int],
    m: Sequence[int | str],
) -> dict[str, float]:
    """Pass@k^(m) averaged over problems, for every (k, m) pair with m <= k.

    The mean is taken over the exact per-problem fractions, so the table is exact too.

    Args:
        num_samples, num_correct: as in `pass_at_k_m`.
        k: the k values, e.g. [1, 5, 10].
        m: the m values; "k" means m = k. Pairs with m > k are left out.

    Returns:
        {"pass@{k}^({m})": value}, e.g. {"pass@1^(1)": 0.5, "pass@5^(5)": 0.125}, ordered by k then m.
    """
    if len(num_correct) == 0:
        raise ValueError("num_correct is empty; score at least one problem")
    k, m = _values("k", k), _values("m", m)
    for value in k:
        if not _is_int(value) or value < 1:
            raise ValueError(f"k={k!r} is invalid: {value!r} is not an integer >= 1")
    pairs = [(k_, m_) for k_ in k for m_ in sorted({resolve_m(value, k_) for value in m}) if m_ <= k_]
    if not pairs:
        raise ValueError(f"k={k!r} and m={m!r} give no pair with 1 <= m <= k; Pass@k^(m) needs m <= k")
    table = {}
    for k_, m_ in pairs:
        values = _fractions(num_samples, num_correct, k_, m_)
        table[f"pass@{k_}^({m_})"] = float(sum(values) / len(values))
    return table
