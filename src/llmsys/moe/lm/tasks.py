"""The arithmetic task: problems with checkable answers, prompts, and a partial-credit reward.

Protocol
--------
A problem is one line ``a<op>b=c`` with ``op`` one of ``+ - *``: ``a, b`` in ``[0, 99]`` for
``+``, ``a >= b`` for ``-`` (no negatives), ``b`` in ``[0, 9]`` for ``*``. A prompt holds
``shots`` solved problems of the same operation, one per line, then the question
``a<op>b=``; the answer is ``c`` followed by a newline. Pre-training text
(:func:`arithmetic_text`) is runs of solved lines in the same format, so the pre-trained
model has seen the format but not the RL reward.

:func:`reward` gives partial credit so a weak model's reward does not start at zero:
``0.2`` for a well-formed answer (a digit string ended by a newline, the format reward of
common GRPO recipes) plus ``0.8`` times the share of answer digits right, aligned from the
least significant digit, over the longer of the two strings. An exact answer with its
newline scores 1; anything that is not a digit string scores 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmsys.core.errors import InputError

OPS = ("+", "-", "*")


@dataclass(frozen=True, slots=True)
class Problem:
    """One arithmetic question with its prompt and answer."""

    prompt: str
    """Few-shot context plus the question, ending in ``=``."""
    answer: str
    """The correct result's decimal digits (no newline)."""


def _one(rng: np.random.Generator, op: str, max_operand: int = 99) -> tuple[str, str]:
    a = int(rng.integers(0, max_operand + 1))
    b = int(rng.integers(0, min(9, max_operand) + 1 if op == "*" else max_operand + 1))
    if op == "-" and b > a:
        a, b = b, a
    value = a + b if op == "+" else a - b if op == "-" else a * b
    return f"{a}{op}{b}=", str(value)


def make_problem(
    rng: np.random.Generator, shots: int = 4, ops: str = "+-*", max_operand: int = 99
) -> Problem:
    """Draw a problem with an operation from ``ops`` and operands up to ``max_operand``
    (``*``'s second operand stays below 10).

    Raises:
        InputError: ``shots`` is negative, ``ops`` is empty or holds an unknown operation,
            or ``max_operand`` is outside ``[1, 99]``.
    """
    if shots < 0:
        raise InputError("shots must be >= 0")
    if not ops or any(op not in OPS for op in ops):
        raise InputError(f"ops must be a non-empty string of {OPS}, got {ops!r}")
    if not 1 <= max_operand <= 99:
        raise InputError("max_operand must be in [1, 99]")
    chosen = ops[int(rng.integers(0, len(ops)))]
    lines = ["".join(_one(rng, chosen, max_operand)) + "\n" for _ in range(shots)]
    question, answer = _one(rng, chosen, max_operand)
    return Problem("".join(lines) + question, answer)


def arithmetic_text(rng: np.random.Generator, num_bytes: int, run_lines: int = 8) -> bytes:
    """``num_bytes`` of solved problems in runs of ``run_lines`` lines of one operation."""
    out: list[str] = []
    size = 0
    while size < num_bytes:
        op = OPS[int(rng.integers(0, len(OPS)))]
        for _ in range(run_lines):
            line = "".join(_one(rng, op)) + "\n"
            out.append(line)
            size += len(line)
    return "".join(out).encode()[:num_bytes]


def reward(response: str, answer: str) -> float:
    """Partial-credit reward of ``response`` for ``answer`` (see the module docstring)."""
    line, newline, _ = response.partition("\n")
    pred = line.strip()
    if not pred or not pred.isdigit():
        return 0.0
    right = sum(1 for x, y in zip(reversed(pred), reversed(answer), strict=False) if x == y)
    return 0.2 * bool(newline) + 0.8 * right / max(len(pred), len(answer))
