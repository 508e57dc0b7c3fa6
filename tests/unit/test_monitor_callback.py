"""Config → monitor settings, the held-out batches, table schemas, the checkpoint-size hook."""

import pytest
import torch

from loss_slope.metrics.errors import MonitorError
from loss_slope.metrics.monitors import CURVATURE_KEYS, NOISE_KEYS
from loss_slope.tables.schema import KEEP_ON_RESUME, TABLES, columns
from loss_slope.train.checkpoint_io import AtomicCheckpointIO
from loss_slope.train.compose import compose_train_config
from loss_slope.train.monitor_callback import MonitorCallback, held_out_batches, monitor_failure, monitor_settings


def test_table_columns_are_the_monitor_keys():
    assert tuple(columns("curvature")) == CURVATURE_KEYS
    assert tuple(columns("noise")) == NOISE_KEYS
    assert set(KEEP_ON_RESUME) == set(TABLES)
    assert all(KEEP_ON_RESUME[t](5, 5) for t in ("val", "curvature", "noise", "checkpoints"))


def test_defaults_are_the_study_cadence():
    cfg = compose_train_config(["run_dir=x"])
    config, s = monitor_settings(cfg.trainer.monitors, seed=3, batch_size=128, steps_per_epoch=391)
    assert (config.curvature_every_steps, config.noise_every_epochs) == (500, 2)
    assert (config.hutch_matvecs, config.lambda_iters, config.curvature_batches) == (50, 20, 1)
    assert s["enabled"] and s["checkpoint_size"] and s["noise_every_steps"] == 782
    assert s["curvature_batch_size"] == 128 and config.seed == 3


@pytest.mark.parametrize(
    "overrides,curv,noise,ckpt",
    [
        ({"enabled": False}, 0, 0, False),
        ({"curvature_every_steps": None}, 0, 2, True),
        ({"noise_every_epochs": 0}, 500, 0, True),
        ({"checkpoint_size": False, "curvature_every_steps": 220}, 220, 2, False),
    ],
)
def test_each_monitor_can_be_turned_off(overrides, curv, noise, ckpt):
    base = dict(compose_train_config(["run_dir=x"]).trainer.monitors)
    config, s = monitor_settings({**base, **overrides}, seed=0, batch_size=32, steps_per_epoch=44)
    assert (config.curvature_every_steps, config.noise_every_epochs, s["checkpoint_size"]) == (curv, noise, ckpt)
    assert s["noise_every_steps"] == noise * 44


def test_no_monitor_config_means_off():
    config, s = monitor_settings(None, seed=0, batch_size=32, steps_per_epoch=44)
    assert not s["enabled"] and config.curvature_every_steps == 0 and config.noise_every_epochs == 0


class _Train:
    def __init__(self):
        self.images = torch.arange(40 * 4, dtype=torch.uint8).view(40, 1, 2, 2)
        self.labels = torch.arange(40) % 10
        self.normalize = lambda x: x.float() / 255.0


def test_held_out_batches_are_fixed_unaugmented_and_normalised():
    a = held_out_batches(_Train(), n_batches=2, batch_size=5, seed=0)
    b = held_out_batches(_Train(), n_batches=2, batch_size=5, seed=0)
    c = held_out_batches(_Train(), n_batches=2, batch_size=5, seed=1)
    assert len(a) == 2 and a[0][0].shape == (5, 1, 2, 2) and a[0][0].dtype == torch.float32
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    idx = (a[0][0][:, 0, 0, 0] * 255).round().long() // 4  # image i holds 4i .. 4i+3
    assert torch.equal(a[0][1], idx % 10)


def test_checkpoint_rows_are_written_after_the_file_once_per_step_and_kind(tmp_path):
    from loss_slope.metrics.monitors import MonitorConfig

    latest, best = tmp_path / "ck" / "latest", tmp_path / "ck" / "best"
    cb = MonitorCallback(
        tables_dir=tmp_path / "tables",
        config=MonitorConfig(curvature_every_steps=0, noise_every_epochs=0),
        batches=[],
        steps_per_epoch=10,
        checkpoint_dirs={"latest": latest, "best": best},
    )
    io = AtomicCheckpointIO()
    io.after_save.append(cb._checkpoint_written)
    seen_sizes = []
    io.after_save.append(lambda ckpt, path: seen_sizes.append(path.stat().st_size))  # the file is in place
    for step, path in (
        (5, best / "best-5.ckpt"),
        (5, latest / "latest.ckpt"),
        (5, latest / "latest.ckpt"),
        (10, latest / "latest.ckpt"),
        (10, tmp_path / "other.ckpt"),
    ):
        io.save_checkpoint({"global_step": step, "w": torch.zeros(1000)}, path)
    lines = (tmp_path / "tables" / "checkpoints.csv").read_text().splitlines()
    assert lines[0] == "step,epoch,time,kind,file,checkpoint_size_mb"
    rows = [line.split(",") for line in lines[1:]]
    assert [(r[0], r[3], r[4]) for r in rows] == [
        ("5", "best", "best-5.ckpt"),
        ("5", "latest", "latest.ckpt"),
        ("10", "latest", "latest.ckpt"),
        ("10", "other", "other.ckpt"),
    ]
    assert float(rows[0][5]) == seen_sizes[0] / 1e6
    # a new callback on the same table (a resumed attempt) knows the rows already written
    cb2 = MonitorCallback(
        tables_dir=tmp_path / "tables",
        config=MonitorConfig(curvature_every_steps=0, noise_every_epochs=0),
        batches=[],
        steps_per_epoch=10,
        checkpoint_dirs={"latest": latest, "best": best},
    )
    assert cb2._seen == {(5, "best"), (5, "latest"), (10, "latest"), (10, "other")}


def test_best_checkpoints_are_written_without_the_monitor_state(tmp_path):
    from loss_slope.metrics.monitors import MonitorConfig

    latest, best = tmp_path / "ck" / "latest", tmp_path / "ck" / "best"
    cb = MonitorCallback(
        tables_dir=tmp_path / "tables",
        config=MonitorConfig(),
        batches=[],
        steps_per_epoch=10,
        checkpoint_dirs={"latest": latest, "best": best},
    )
    io = AtomicCheckpointIO()
    io.before_save.append(cb._leave_state_out_of_best)
    checkpoint = {
        "global_step": 5,
        "state_dict": {"w": torch.ones(3)},
        "callbacks": {cb.state_key: cb.state_dict(), "Other": {"x": 1}},
    }
    for path in (best / "best-5.ckpt", latest / "latest.ckpt", tmp_path / "other.ckpt"):
        io.save_checkpoint(checkpoint, path)
    read = {
        p: torch.load(p, weights_only=True)
        for p in (best / "best-5.ckpt", latest / "latest.ckpt", tmp_path / "other.ckpt")
    }
    assert set(read[best / "best-5.ckpt"]["callbacks"]) == {"Other"}
    assert torch.equal(read[best / "best-5.ckpt"]["state_dict"]["w"], torch.ones(3))
    assert set(read[latest / "latest.ckpt"]["callbacks"]) == {cb.state_key, "Other"}
    assert set(read[tmp_path / "other.ckpt"]["callbacks"]) == {cb.state_key, "Other"}
    assert cb.state_key in checkpoint["callbacks"]  # the caller's dict is not changed


class _FakeModule(torch.nn.Module):
    """What the callback needs of a LightningModule: a net, its device, parameters."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
        )

    @property
    def device(self):
        return torch.device("cpu")

    def forward(self, x):
        return self.net(x)


def test_out_of_memory_in_a_curvature_event_writes_a_nan_row_with_the_reason(tmp_path, caplog):
    import gc
    import weakref

    from loss_slope.metrics.monitors import MonitorConfig
    from loss_slope.train.faults import InjectedCurvatureOOM

    module = _FakeModule()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 3, 2, 2, generator=g), torch.randint(0, 3, (16,), generator=g))]
    held = []  # what the failed event allocated: its logits (and the graph behind them) must be freed

    def loss_fn(logits, y):
        held.append(weakref.ref(logits))
        return torch.nn.functional.cross_entropy(logits, y)

    cb = MonitorCallback(
        tables_dir=tmp_path / "tables",
        config=MonitorConfig(curvature_every_steps=5, noise_every_epochs=0, hutch_matvecs=6, lambda_iters=5),
        batches=batches,
        steps_per_epoch=10,
        loss_fn=loss_fn,
        fault=InjectedCurvatureOOM(at_step=10),
    )
    with caplog.at_level("WARNING", logger="loss_slope.train"):
        cb._curvature(module, 5)
        cb._curvature(module, 10)  # a real torch.cuda.OutOfMemoryError inside the event
        cb._curvature(module, 15)
    cb.close()
    rows = (tmp_path / "tables" / "curvature.csv").read_text().splitlines()
    header = rows[0].split(",")
    by_step = {int(r.split(",")[0]): dict(zip(header, r.split(","))) for r in rows[1:]}
    assert sorted(by_step) == [5, 10, 15]
    assert by_step[10]["lambda_max"] == "nan" and by_step[10]["hutch_trace"] == "nan"
    assert by_step[10]["status"].startswith("out of memory: CUDA out of memory")
    assert by_step[5]["status"] == by_step[15]["status"] == "ok" and float(by_step[15]["lambda_residual"]) >= 0
    assert any("curvature at step 10: out of memory" in r.getMessage() for r in caplog.records)
    gc.collect()
    assert held and all(ref() is None for ref in held)  # nothing of the failed event is kept alive


def test_monitor_failures_training_survives_and_bugs_it_does_not():
    """One classification for the training's NaN row and the probe: out of memory (the probe's level
    does not fit), a failed measurement (recorded), anything else re-raised."""
    oom = monitor_failure(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB\nmore"))
    assert oom == (True, "out of memory: CUDA out of memory. Tried to allocate 2 GiB")
    assert monitor_failure(MonitorError("non-finite Hessian-vector product")) == (
        False,
        "failed: MonitorError: non-finite Hessian-vector product",
    )
    assert monitor_failure(ValueError("")) == (False, "failed: ValueError: ValueError")
    assert monitor_failure(KeyError("lambda_max")) is None
    assert monitor_failure(TypeError("bad call")) is None
