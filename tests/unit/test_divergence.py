import math

from loss_slope.train.divergence import DivergenceGuard


def test_nan_is_divergence_at_its_step():
    g = DivergenceGuard(reference_steps=2)
    assert g.update([0, 1, 2], [2.3, 2.2, 2.1]) is None
    step, reason = g.update([3, 4], [2.0, math.nan])
    assert step == 4 and "non-finite" in reason


def test_explosion_relative_to_the_start():
    g = DivergenceGuard(explode_factor=10, reference_steps=4)
    assert g.update(list(range(4)), [2.0, 2.0, 2.0, 2.0]) is None
    assert g.update([4, 5], [19.9, 1.0]) is None
    step, reason = g.update([6, 7], [20.1, 30.0])
    assert step == 6 and "exceeds 10 x" in reason


def test_factor_none_only_checks_finiteness():
    g = DivergenceGuard(explode_factor=None, reference_steps=1)
    assert g.update([0, 1], [1.0, 1e9]) is None
    assert g.update([2], [math.inf])[0] == 2


def test_state_round_trip_across_resume():
    a = DivergenceGuard(reference_steps=3)
    a.update([0, 1], [3.0, 3.0])
    b = DivergenceGuard(reference_steps=3)
    b.load_state_dict(a.state_dict())
    assert b.update([2, 3], [3.0, 31.0]) == a.update([2, 3], [3.0, 31.0])
