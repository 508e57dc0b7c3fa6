"""The latest checkpoint's cadence (LatestCheckpoint) and the background checkpoint writer."""

import errno
import threading

import pytest
import torch

from loss_slope.train.checkpoint_io import AtomicCheckpointIO, host_snapshot
from loss_slope.train.latest import LatestCheckpoint
from loss_slope.train.latest_cadence import LatestSettings, epoch_end_due


def test_latest_is_due_at_the_last_validation_of_each_epoch():
    # 391 steps per epoch, validation every 97 steps: 97, 194, 291, 388 | 488, ...
    cb = LatestCheckpoint("x", steps_per_epoch=391, val_interval=97, every_epochs=1, every_minutes=None)
    cb._t_last = 0.0
    due = [s for s in range(1, 391 * 3 + 1) if cb.due(s, stopping=False, now=1e9)]
    vals = [e * 391 + k * 97 for e in range(3) for k in range(1, 5)]
    assert [s for s in due if s in vals] == [388, 779, 1170]
    # digits demo: 44 steps per epoch, validation every 11: exactly the epoch ends
    cb = LatestCheckpoint("x", steps_per_epoch=44, val_interval=11, every_epochs=2, every_minutes=None)
    assert [s for s in range(11, 133, 11) if cb.due(s, stopping=False, now=0.0)] == [88]


def test_latest_settings_defaults_and_off_switches_are_read_once_for_every_reader():
    assert LatestSettings.from_trainer({}) == LatestSettings(1, 10.0, True)
    assert LatestSettings.from_trainer({"checkpoint": None}) == LatestSettings(1, 10.0, True)
    # a key left out takes its default; null or 0 turns the criterion off
    got = LatestSettings.from_trainer({"checkpoint": {"latest_every_minutes": None, "background_write": False}})
    assert got == LatestSettings(every_epochs=1, every_minutes=0.0, background_write=False)
    got = LatestSettings.from_trainer({"checkpoint": {"latest_every_epochs": None, "latest_every_minutes": 2}})
    assert got == LatestSettings(every_epochs=0, every_minutes=2.0, background_write=True)
    cb = LatestCheckpoint.from_settings("x", got, steps_per_epoch=40, val_interval=10)
    assert (cb.every_epochs, cb.every_s) == (0, 120.0)


def test_epoch_end_rule_is_the_callbacks():
    # 391 steps per epoch, validation every 97: the epoch's last validation is at 388 (3 steps short)
    kw = {"steps_per_epoch": 391, "val_interval": 97}
    assert [s for s in (97, 291, 388, 485, 779) if epoch_end_due(s, every_epochs=1, **kw)] == [388, 779]
    assert [s for s in (388, 779, 1170, 1561) if epoch_end_due(s, every_epochs=2, **kw)] == [779, 1561]
    assert not epoch_end_due(388, every_epochs=0, **kw) and not epoch_end_due(0, every_epochs=1, **kw)
    cb = LatestCheckpoint("x", every_epochs=3, every_minutes=None, **kw)
    steps = range(1, 391 * 7)
    assert [s for s in steps if cb.epoch_due(s)] == [s for s in steps if epoch_end_due(s, every_epochs=3, **kw)]


def test_latest_time_and_stop_criteria():
    cb = LatestCheckpoint("x", steps_per_epoch=40, val_interval=10, every_epochs=1, every_minutes=10)
    cb._t_last = 100.0
    assert cb.due(10, stopping=False, now=100.0 + 599) is None
    assert cb.due(10, stopping=False, now=100.0 + 600) == "time"
    assert cb.due(20, stopping=True, now=0.0) == "stop"
    assert cb.due(40, stopping=False, now=0.0) == "epoch"
    cb._last_step = 40
    assert cb.due(40, stopping=True, now=1e9) is None  # never twice at one step
    assert cb.due(0, stopping=True, now=1e9) is None


def test_host_snapshot_is_independent_of_later_updates():
    w = torch.ones(3)
    ckpt = {"state_dict": {"w": w}, "loops": [1, (w, 2)], "global_step": 5}
    snap = host_snapshot(ckpt)
    w.add_(1)
    assert snap["state_dict"]["w"].tolist() == [1.0, 1.0, 1.0]
    assert snap["loops"][1][0].tolist() == [1.0, 1.0, 1.0] and snap["global_step"] == 5


def test_background_write_waits_for_the_previous_rename(tmp_path, monkeypatch):
    io = AtomicCheckpointIO(background=True)
    written, gate, started = [], threading.Event(), threading.Event()
    io.after_save.append(lambda ckpt, path: written.append(ckpt["global_step"]))
    real_save = torch.save

    def slow_save(obj, fh, *a, **k):
        started.set()
        if obj["global_step"] == 1:
            assert gate.wait(30)
        return real_save(obj, fh, *a, **k)

    monkeypatch.setattr(torch, "save", slow_save)
    w = torch.zeros(2)
    io.save_checkpoint({"global_step": 1, "w": w}, tmp_path / "latest.ckpt")  # returns at once
    assert started.wait(30)
    w.fill_(7.0)  # training goes on: the snapshot keeps step 1's values
    assert not (tmp_path / "latest.ckpt").exists() and written == []
    t = threading.Thread(target=io.save_checkpoint, args=({"global_step": 2, "w": w}, tmp_path / "latest.ckpt"))
    t.start()
    t.join(0.2)
    assert t.is_alive()  # the second save waits for the first one's rename
    gate.set()
    t.join(30)
    io.teardown()
    assert written == [1, 2] and io.saves == 2 and io.bytes_written > 0
    got = torch.load(tmp_path / "latest.ckpt", weights_only=True)
    assert got["global_step"] == 2 and got["w"].tolist() == [7.0, 7.0]
    assert not (tmp_path / "latest.ckpt.tmp").exists()


def test_background_write_error_is_raised_in_the_training_thread(tmp_path, monkeypatch):
    io = AtomicCheckpointIO(background=True)
    path = tmp_path / "latest.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)
    io.wait()

    def full_disk(obj, fh, *a, **k):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    with pytest.raises(OSError, match="No space left"):
        io.teardown()
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert not (tmp_path / "latest.ckpt.tmp").exists()


def _fake_trainer(step: int, last_batch: bool, io, callbacks=()):
    from types import SimpleNamespace

    saved = []
    progress = SimpleNamespace(is_last_batch=last_batch)
    trainer = SimpleNamespace(
        global_step=step,
        validating=False,
        callbacks=list(callbacks),
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
        strategy=SimpleNamespace(checkpoint_io=io),
        save_checkpoint=saved.append,
    )
    return trainer, saved


def test_sigterm_after_the_last_batch_of_an_epoch_keeps_the_epoch_end_checkpoint(tmp_path):
    # Lightning resumes a checkpoint taken after an epoch's last batch (outside a validation) into the epoch
    # after the next; there the interrupt handler saves nothing and reports the latest checkpoint's step
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from loss_slope.train.interrupt import CheckpointOnInterrupt

    path = tmp_path / "latest.ckpt"
    io = AtomicCheckpointIO(background=True)
    io.save_checkpoint({"global_step": 44, "w": torch.ones(2)}, path)  # the epoch's last validation, in flight
    cb = CheckpointOnInterrupt(path)
    trainer, saved = _fake_trainer(44, True, io)
    cb.on_exception(trainer, None, SIGTERMException())
    assert saved == [] and cb.saved_step == 44
    trainer, saved = _fake_trainer(50, False, io)  # mid-epoch: saved at this step
    cb.on_exception(trainer, None, SIGTERMException())
    assert saved == [str(path)] and cb.saved_step == 50
    trainer, saved = _fake_trainer(60, False, io)
    cb.on_exception(trainer, None, RuntimeError("not an interrupt"))
    assert saved == []


def test_sigterm_at_the_step_of_a_stop_checkpoint_keeps_it(tmp_path):
    # a stop (time budget) saved latest mid-epoch at step 30; the SIGTERM lands as Lightning ends the epoch
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from loss_slope.train.interrupt import CheckpointOnInterrupt
    from loss_slope.train.latest import LatestCheckpoint

    path = tmp_path / "latest.ckpt"
    io = AtomicCheckpointIO(background=False)
    io.save_checkpoint({"global_step": 30, "w": torch.ones(2)}, path)
    latest = LatestCheckpoint(path, steps_per_epoch=44, val_interval=11)
    latest._last_step = 30  # what its on_validation_end records after the stop checkpoint
    cb = CheckpointOnInterrupt(path)
    trainer, saved = _fake_trainer(30, False, io, callbacks=[latest])
    cb.on_exception(trainer, None, SIGTERMException())
    assert saved == [] and cb.saved_step == 30
    trainer, saved = _fake_trainer(31, False, io, callbacks=[latest])  # a step on: saved there
    cb.on_exception(trainer, None, SIGTERMException())
    assert saved == [str(path)] and cb.saved_step == 31


def test_the_rename_is_made_durable_by_syncing_the_folder(tmp_path, monkeypatch):
    from loss_slope.train import checkpoint_io

    synced = []
    monkeypatch.setattr(checkpoint_io, "fsync_dir", synced.append)
    io = AtomicCheckpointIO(background=False)
    io.save_checkpoint({"global_step": 3}, tmp_path / "latest.ckpt")
    assert synced == [tmp_path / "latest.ckpt"]
    monkeypatch.undo()
    checkpoint_io.fsync_dir(tmp_path / "latest.ckpt")  # a real folder
    checkpoint_io.fsync_dir(tmp_path / "no" / "such" / "file")  # a missing one: nothing happens
