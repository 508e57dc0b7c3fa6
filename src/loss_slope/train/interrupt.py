"""Save the latest checkpoint when training is interrupted by SIGTERM or Ctrl-C.

Lightning turns SIGTERM (scancel, a preemption, the pack launcher forwarding
a signal) into ``SIGTERMException`` at the end of the current batch, so the
loop state is consistent here and a rerun resumes from exactly this step.
"""

from __future__ import annotations

import logging

from pytorch_lightning import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger("loss_slope.train")


class CheckpointOnInterrupt(Callback):
    def __init__(self, path) -> None:
        self.path = str(path)
        self.saved_step: int | None = None

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, (SIGTERMException, KeyboardInterrupt)) and trainer.global_step > 0:
            trainer.save_checkpoint(self.path)
            self.saved_step = trainer.global_step
            log.warning("%s: saved the latest checkpoint at step %d", type(exception).__name__, trainer.global_step)
