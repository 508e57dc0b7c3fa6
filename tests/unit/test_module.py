"""CurveModule's manual optimization: gradient clipping, the LR schedule per
step, and micro-batches that add up to the whole batch's gradient."""

import pytest
import pytorch_lightning as pl
import torch

from loss_slope.train.module import CurveModule, MicroBatcher
from loss_slope.train.schedule import Schedule


def fit_one_step(clip=None, micro=None, steps=1, compile=None):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y = torch.randn(8, 3, 2, 2) * 10, torch.randint(0, 3, (8,))
    module = CurveModule(net, lambda p: torch.optim.SGD(p, lr=1.0), Schedule("constant", 0, 10),
                         gradient_clip_val=clip, micro_batcher=MicroBatcher(size=micro), compile=compile)
    before = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, max_epochs=-1)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    trainer.fit(module, train_dataloaders=data)
    after = torch.cat([p.detach().flatten() for p in net.parameters()])
    return after - before, trainer


def test_gradient_clipping_bounds_the_update():
    free, _ = fit_one_step()
    clipped, _ = fit_one_step(clip=1e-3)
    assert free.norm() > 1e-2
    assert clipped.norm() == pytest.approx(1e-3, rel=1e-4)  # SGD with lr 1: the update is the clipped gradient


def test_micro_batches_give_the_whole_batch_gradient():
    whole, trainer = fit_one_step(steps=3)
    assert trainer.global_step == 3
    for micro in (4, 2, 1):
        parts, trainer = fit_one_step(micro=micro, steps=3)
        assert trainer.global_step == 3
        torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-6)


def test_compiled_training_forward_keeps_the_state_dict_and_the_numerics():
    eager, _ = fit_one_step(steps=2)
    compiled, trainer = fit_one_step(steps=2, compile={"backend": "eager"})  # wiring only: no code generation
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    keys = set(trainer.lightning_module.state_dict())
    assert keys == {"net.1.weight", "net.1.bias"}  # no _orig_mod prefix: checkpoints stay interchangeable


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (inductor code generation)")
def test_inductor_compiled_training_on_cuda_matches_eager():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 30 * 30, 10)).cuda()
    module = CurveModule(net, lambda p: torch.optim.SGD(p, lr=0.1), Schedule("constant", 0, 10), compile={})
    x = torch.randn(16, 3, 32, 32, device="cuda")
    torch.testing.assert_close(module._train_forward(x), module(x), rtol=1e-3, atol=1e-3)
