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


def test_the_recorders_verdict_survives_a_resume(tmp_path):
    # the guard never sees the rows before a checkpoint again: the verdict travels in the checkpoint
    from loss_slope.train.recorder import MetricRecorder

    def recorder(d):
        return MetricRecorder(tables_dir=d, steps_per_epoch=10, total_steps=40, val_interval=5, flush_every=20)

    first = recorder(tmp_path / "a")
    first.diverged = (4, "non-finite training loss (1 steps) from step 4")
    state = first.state_dict()
    resumed = recorder(tmp_path / "b")
    resumed.load_state_dict(state)
    assert resumed.diverged == (4, "non-finite training loss (1 steps) from step 4")
    older = recorder(tmp_path / "c")  # a checkpoint without the key: no verdict yet
    older.load_state_dict({"divergence": state["divergence"]})
    assert older.diverged is None


def test_the_flush_schedule_is_a_function_of_the_step():
    from loss_slope.train.flush_cadence import regular_flush
    from loss_slope.train.val_schedule import last_validation_step

    demo = dict(steps_per_epoch=44, val_interval=11)
    assert [last_validation_step(n, **demo) for n in (0, 10, 11, 43, 44, 45, 55)] == [0, 0, 11, 33, 44, 44, 55]
    study = dict(steps_per_epoch=391, val_interval=97)  # validations at 97, 194, 291, 388 of each epoch
    assert [last_validation_step(n, **study) for n in (96, 97, 388, 391, 392, 485, 488)] == [
        0,
        97,
        388,
        388,
        388,
        388,
        488,
    ]
    # flush_every 5 after each validation at 11, 22, ...: 5, 10, 16, 21, 27, ...; never at a validation itself
    due = [n for n in range(1, 30) if regular_flush(n, last_validation_step(n, **demo), 5)]
    assert due == [5, 10, 16, 21, 27]


def test_the_progress_rate_of_a_resumed_attempt_counts_its_own_steps(tmp_path, monkeypatch, caplog):
    """The first progress line after a resume at step 60 used to divide all 65 steps by this attempt's time."""
    import logging
    from types import SimpleNamespace

    import torch

    from loss_slope.train import recorder as R

    clock = iter([100.0, 1000.0, 1001.0])  # construction, the attempt's training start, the flush
    monkeypatch.setattr(R.time, "monotonic", lambda: next(clock))
    rec = R.MetricRecorder(tables_dir=tmp_path, steps_per_epoch=44, total_steps=88, val_interval=11, flush_every=5)
    rec.on_train_start(SimpleNamespace(global_step=60), None)
    for step in range(60, 65):
        rec._pending.append((step, 0.0, 0.1, 0.0))
        rec._loss.append(torch.tensor(2.0))
        rec._correct.append(torch.tensor(3.0))
        rec._count.append(32)
    with caplog.at_level(logging.INFO, logger="loss_slope.train"):
        rec.flush()
    assert "step 65/88" in caplog.text and "5.0 steps/s" in caplog.text  # 5 steps in 1 s
    rec.close()
