"""A run stopped in-process (as its time budget or the divergence guard stops it) and then resumed
writes the tables of an uninterrupted run, wherever in an epoch the stop falls (CPU, fixed seed)."""

import pandas as pd
import pytest
import pytorch_lightning as pl
from omegaconf import OmegaConf

from loss_slope.train import steps as S
from loss_slope.train.compose import compose_train_config
from loss_slope.train.fingerprint import config_fingerprint
from loss_slope.train.work_tree import open_work_tree

# 2 epochs x 44 steps, tiny net, no monitors: a few seconds per run
BASE = [
    "experiment=s_core",
    "trainer.epochs=2",
    "model.base_width=4",
    "schedule=cosine",
    "schedule.warmup_epochs=0.5",
    "seed=3",
    "trainer.accelerator=cpu",
    "trainer.flush_every_steps=5",
    "trainer.monitors.enabled=false",
]


class StopAt(pl.Callback):
    """Sets ``should_stop`` after optimizer step ``step``, as Lightning's timer does when the budget is spent."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            trainer.should_stop = True


def train(run_dir, extra, monkeypatch, callbacks=()):
    cfg = compose_train_config(BASE + [f"run_dir={run_dir}", *extra])
    fp = config_fingerprint(OmegaConf.to_container(cfg, resolve=True))
    paths = open_work_tree(cfg.run_dir, fp)
    monkeypatch.setattr(S, "fault_callbacks", lambda cfg, root: list(callbacks))
    run = S.prepare_run(cfg, paths, fp, use_cuda=False)
    parts = S.build_trainer(cfg, run)
    train.parts = parts
    return S.finish(cfg, run, parts, S.train(run, parts))


def table(run_dir, name):
    t = pd.read_csv(run_dir / "tables" / f"{name}.csv")
    return t.drop(columns=[c for c in ("time",) if c in t.columns])


@pytest.mark.parametrize(
    "val_per_epoch,stop_at",
    [
        (3, 44),  # the epoch's last batch, not a scheduled validation (those are 14, 28, 42)
        (4, 44),  # the epoch's last batch and its last scheduled validation
        (3, 30),  # mid-epoch, off the schedule
    ],
)
def test_stop_then_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch, val_per_epoch, stop_at):
    extra = [f"trainer.val_per_epoch={val_per_epoch}"]
    assert train(tmp_path / "ref", extra, monkeypatch) == 0
    assert train(tmp_path / "run", extra, monkeypatch, [StopAt(stop_at)]) != 0
    assert len(table(tmp_path / "run", "steps")) == stop_at
    assert train(tmp_path / "run", extra, monkeypatch) == 0
    for name in ("steps", "val"):
        pd.testing.assert_frame_equal(table(tmp_path / "ref", name), table(tmp_path / "run", name), check_exact=True)


def test_the_divergence_guard_resumes_with_every_row_the_tables_hold(tmp_path, monkeypatch):
    # a stop at step 5 with rows flushed every 20 steps: the checkpoint's guard state must include the
    # five rows written with it, or the resumed guard never sees them (its reference loss differs)
    extra = ["trainer.flush_every_steps=20", "trainer.divergence.reference_steps=10"]
    assert train(tmp_path / "ref", extra, monkeypatch) == 0
    reference = train.parts.recorder.guard.state_dict()
    assert train(tmp_path / "run", extra, monkeypatch, [StopAt(5)]) != 0
    assert train(tmp_path / "run", extra, monkeypatch) == 0
    assert train.parts.recorder.guard.state_dict() == reference
