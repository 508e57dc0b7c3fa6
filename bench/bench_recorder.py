"""Cost of per-step logging, as ratios measured in the same run.

Three ways to train the same model on the same device-resident batches:

  bare        a plain PyTorch loop (forward, backward, step, LR schedule)
  lightning   the project's Lightning module, no recorder, no validation
  recorded    the same plus the MetricRecorder (every step logged)

Prints per-step times (median of interleaved repeats) and the ratios
recorded/lightning (the logging cost; target <= 1.03) and recorded/bare.

    python bench/bench_recorder.py [--steps 300] [--repeats 3] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from loss_slope.data.datasets import build_data
from loss_slope.models.resnet import CifarResNet18
from loss_slope.train.schedule import Schedule

DATA = OmegaConf.create(
    {
        "_target_": "loss_slope.data.datasets.digits",
        "name": "digits",
        "root": None,
        "image_size": 16,
        "batch_size": 32,
        "eval_batch_size": 512,
        "drop_last": True,
        "augment": {"crop": True, "scale": [0.7, 1.0], "ratio": [0.8, 1.25], "flip_p": 0.0},
    }
)


def make(steps):
    torch.manual_seed(0)
    data = build_data(DATA, seed=0, device=torch.device("cpu"))
    net = CifarResNet18(num_classes=10, in_channels=1, base_width=8)
    sched = Schedule("constant", warmup_steps=44, total_steps=max(steps, 45))
    return data, net, sched


def bare(steps):
    data, net, sched = make(steps)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    lr_s = torch.optim.lr_scheduler.LambdaLR(opt, sched.factor)
    it = iter(data.train)
    t0 = time.perf_counter()
    for i in range(steps):
        try:
            x, y = next(it)
        except StopIteration:
            data.train.step_source = lambda i=i: i
            it = iter(data.train)
            x, y = next(it)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_s.step()
    float(loss)
    return (time.perf_counter() - t0) / steps


def lightning(steps, recorded):
    import pytorch_lightning as pl
    from lightning_fabric.plugins.environments import LightningEnvironment

    from loss_slope.train.module import CurveModule
    from loss_slope.train.recorder import MetricRecorder

    data, net, sched = make(steps)
    module = CurveModule(net, lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4), sched)
    callbacks = []
    with tempfile.TemporaryDirectory() as tmp:
        if recorded:
            callbacks.append(
                MetricRecorder(
                    tables_dir=tmp, steps_per_epoch=len(data.train), total_steps=steps, val_interval=11, flush_every=100
                )
            )
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=steps,
            logger=False,
            limit_val_batches=0,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=callbacks,
            plugins=[LightningEnvironment()],
        )
        data.train.step_source = lambda: trainer.global_step
        timer = {}

        class T(pl.Callback):
            def on_train_batch_start(self, tr, m, b, i):
                if i == 0 and "t0" not in timer:
                    timer["t0"] = time.perf_counter()

            def on_train_end(self, tr, m):
                timer["t1"] = time.perf_counter()

        trainer.callbacks.append(T())
        trainer.fit(module, train_dataloaders=data.train)
    return (timer["t1"] - timer["t0"]) / steps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--markdown")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    res = {"bare": [], "lightning": [], "recorded": []}
    for _ in range(a.repeats):  # interleaved so machine noise hits all three alike
        res["bare"].append(bare(a.steps))
        res["lightning"].append(lightning(a.steps, recorded=False))
        res["recorded"].append(lightning(a.steps, recorded=True))
    med = {k: statistics.median(v) for k, v in res.items()}
    rows = [
        ("bare PyTorch loop", med["bare"] * 1e3, 1.0),
        ("Lightning, no recorder", med["lightning"] * 1e3, med["lightning"] / med["bare"]),
        ("Lightning + MetricRecorder", med["recorded"] * 1e3, med["recorded"] / med["bare"]),
    ]
    lines = ["| loop | ms/step | ratio to bare |", "|---|---:|---:|"]
    lines += [f"| {n} | {ms:.2f} | {r:.3f} |" for n, ms, r in rows]
    lines.append(
        f"\nlogging cost (recorded / Lightning without recorder): **{med['recorded'] / med['lightning']:.3f}**"
        f" (target <= 1.03); {a.steps} steps x {a.repeats} interleaved repeats, 1 thread, width-8 ResNet-18,"
        f" digits 16x16, batch 32"
    )
    text = "\n".join(lines)
    print(text)
    if a.markdown:
        with open(a.markdown, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
