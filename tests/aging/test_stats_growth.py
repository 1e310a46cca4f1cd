"""Growth classification, time to exhaustion, change points and work-normalised slopes."""

import numpy as np
import pytest

from llmsys.aging import (
    Growth,
    classify_growth,
    detect_changepoints,
    time_to_exhaustion,
    work_slopes,
)


def _t(m: int = 256) -> np.ndarray:
    return np.linspace(0.0, 36_000.0, m)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        (lambda t: 100.0 * t, Growth.LINEAR),
        (lambda t: 3e6 * (1 - np.exp(-t / 4000.0)), Growth.SATURATING),
        (lambda t: np.where(t > 18_000.0, 2e6, 0.0), Growth.STEP),
    ],
)
def test_classifies_shapes(shape, expected: Growth) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    t = _t()
    y = 1e9 + shape(t) + rng.standard_normal(t.size) * 2e4
    assert classify_growth(t, y, significant=True) is expected
    assert classify_growth(t, y, significant=False) is Growth.NONE


def test_time_to_exhaustion_and_its_interval() -> None:
    # 1 GB free at 100 MB/h -> 10 h; interval from the slope interval [50, 200] MB/h
    tte = time_to_exhaustion(3e9, 4e9, 1e8 / 3600, (5e7 / 3600, 2e8 / 3600))
    assert tte is not None
    assert tte.tte_s / 3600 == pytest.approx(10.0)
    assert tte.tte_low_s / 3600 == pytest.approx(5.0)
    assert tte.tte_high_s is not None and tte.tte_high_s / 3600 == pytest.approx(20.0)
    unbounded = time_to_exhaustion(3e9, 4e9, 1e8 / 3600, (-1.0, 2e8 / 3600))
    assert unbounded is not None and unbounded.tte_high_s is None
    assert time_to_exhaustion(3e9, 4e9, 0.0, (-1.0, 1.0)) is None


def test_changepoints_find_warmup_and_onset() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(0.0, 40_000.0, 2.0)
    warm = np.where(t < 4000, 5e7 * (t / 4000), 5e7)  # fast start-up fill, then flat
    leak = np.where(t > 24_000, (t - 24_000) * 3000.0, 0.0)  # leak starts at 24,000 s
    y = 1e9 + warm + leak + rng.standard_normal(t.size) * 1e5
    cps = detect_changepoints(t, y)
    assert cps.warmup_end_t_s is not None and 2000 <= cps.warmup_end_t_s <= 7000
    assert cps.onset_t_s is not None and 21_000 <= cps.onset_t_s <= 27_000
    flat = detect_changepoints(t, 1e9 + rng.standard_normal(t.size) * 1e5)
    assert flat.warmup_end_t_s is None and flat.onset_t_s is None


def test_work_slopes_follow_requests_not_time() -> None:
    rng = np.random.default_rng(2)
    n = 5000
    # bursty load: requests per second vary 10x, 90 bytes leaked per request
    requests = np.cumsum(rng.choice([1, 10], n)).astype(float)
    tokens = requests * 250.0
    y = 1e9 + 90.0 * requests + rng.standard_normal(n) * 50
    ws = work_slopes(y, requests, tokens)
    assert ws.per_1k_requests == pytest.approx(90_000.0, rel=0.01)
    assert ws.per_million_tokens == pytest.approx(90.0 / 250.0 * 1e6, rel=0.01)
    assert work_slopes(y).per_1k_requests is None
    assert work_slopes(y, np.full(n, 7.0)).per_1k_requests is None
