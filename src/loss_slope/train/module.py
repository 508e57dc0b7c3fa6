"""The LightningModule: cross-entropy classification with a per-step LR schedule."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_lightning import LightningModule
from torch.optim.lr_scheduler import LambdaLR

from loss_slope.train.schedule import Schedule


class CurveModule(LightningModule):
    """Wraps ``net``; ``optimizer`` is a partial (Hydra ``_partial_: true``)."""

    def __init__(self, net: torch.nn.Module, optimizer, schedule: Schedule, *, channels_last: bool = False) -> None:
        super().__init__()
        self.net = net
        self._optimizer_factory = optimizer
        self.schedule = schedule
        self.channels_last = channels_last
        self.val_result: tuple[torch.Tensor, torch.Tensor] | None = None
        self._val_sum = self._val_correct = None
        self._val_n = 0

    def forward(self, x):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        correct = (logits.detach().argmax(1) == y).sum()
        return {"loss": loss, "correct": correct}

    def on_validation_epoch_start(self):
        self._val_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self._val_correct = torch.zeros((), device=self.device, dtype=torch.float64)
        self._val_n = 0

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self._val_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        self._val_correct += (logits.argmax(1) == y).sum().double()
        self._val_n += int(y.shape[0])

    def on_validation_epoch_end(self):
        loss = self._val_sum / self._val_n
        acc = self._val_correct / self._val_n
        self.val_result = (loss, acc)
        # only this metric goes through self.log: the "best" checkpoint monitors it
        self.log("loss_val_nats", loss.float(), prog_bar=True, logger=False)

    def configure_optimizers(self):
        opt = self._optimizer_factory(self.net.parameters())
        schedule = self.schedule

        def lr_lambda(step: int) -> float:  # a plain function: LambdaLR does not pickle it
            return schedule.factor(step)

        sched = LambdaLR(opt, lr_lambda)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}
