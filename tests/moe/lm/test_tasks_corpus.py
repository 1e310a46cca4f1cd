"""Arithmetic task, reward, and the local pre-training corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmsys.core.errors import InputError
from llmsys.moe.lm.corpus import Domain, build_corpus
from llmsys.moe.lm.tasks import arithmetic_text, make_problem, reward


@pytest.mark.parametrize(
    ("response", "answer", "expected"),
    [
        ("68\n", "68", 1.0),
        ("68", "68", 0.8),  # right digits, no newline: no format credit
        ("78\n", "68", 0.2 + 0.4),
        ("168\n", "68", 0.2 + 0.8 * 2 / 3),
        ("8\n", "68", 0.2 + 0.4),
        ("x8\n", "68", 0.0),
        ("\n", "68", 0.0),
        ("", "5", 0.0),
    ],
)
def test_partial_credit_reward(response: str, answer: str, expected: float) -> None:
    assert reward(response, answer) == pytest.approx(expected)


def test_problems_are_checkable_and_deterministic() -> None:
    a = make_problem(np.random.default_rng(3), shots=2)
    b = make_problem(np.random.default_rng(3), shots=2)
    assert a == b
    lines = a.prompt.split("\n")
    assert len(lines) == 3
    for line in lines[:2]:
        lhs, rhs = line.split("=")
        assert eval(lhs) == int(rhs)
    assert eval(lines[2].rstrip("=")) == int(a.answer)
    with pytest.raises(InputError):
        make_problem(np.random.default_rng(0), ops="+/")
    with pytest.raises(InputError):
        make_problem(np.random.default_rng(0), max_operand=100)


def test_arithmetic_text_is_correct() -> None:
    text = arithmetic_text(np.random.default_rng(0), 2000).decode()
    for line in text.split("\n")[:-1]:
        lhs, rhs = line.split("=")
        assert eval(lhs) == int(rhs)


def test_corpus_reports_missing_domains(tmp_path: Path) -> None:
    corpus = build_corpus(64 * 1024, man_dir=tmp_path / "nothing")
    assert Domain.MAN in corpus.missing
    assert set(corpus.streams) == {Domain.PYTHON, Domain.ARITHMETIC}
    assert sum(corpus.mix.values()) == pytest.approx(1.0)
    rows, which = corpus.sample(np.random.default_rng(0), 4, 32)
    assert rows.shape == (4, 32) and rows.max() < 256 and which.shape == (4,)
    with pytest.raises(InputError):
        build_corpus(100)
