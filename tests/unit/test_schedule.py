import math

import pytest

from loss_slope.train.schedule import Schedule


def test_warmup_is_linear_and_starts_above_zero():
    s = Schedule("cosine", warmup_steps=4, total_steps=20)
    assert [s.factor(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_cosine_known_values():
    s = Schedule("cosine", warmup_steps=10, total_steps=110, min_lr_ratio=0.0)
    assert s.factor(10) == pytest.approx(1.0)
    assert s.factor(60) == pytest.approx(0.5)  # half-way through the decay
    assert s.factor(35) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert s.factor(109) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))


def test_cosine_floor():
    s = Schedule("cosine", warmup_steps=0, total_steps=100, min_lr_ratio=0.1)
    assert s.factor(0) == pytest.approx(1.0)
    assert s.factor(50) == pytest.approx(0.1 + 0.9 * 0.5)


def test_constant_after_warmup():
    s = Schedule("constant", warmup_steps=2, total_steps=10)
    assert [s.factor(i) for i in range(5)] == [0.5, 1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("kind,w,t", [("linear", 1, 10), ("cosine", 10, 10), ("cosine", -1, 10)])
def test_rejects_bad_schedules(kind, w, t):
    with pytest.raises(ValueError):
        Schedule(kind, warmup_steps=w, total_steps=t)
