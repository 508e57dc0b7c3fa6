import torch

from loss_slope.data.augment import AugmentConfig, random_resized_crop_flip
from loss_slope.data.loader import DeviceBatches

AUGMENT = AugmentConfig(scale=(0.5, 1.0), flip_p=0.5)


def make(seed=0, n=100, bs=8, augment=AUGMENT):
    x = torch.arange(n * 1 * 6 * 6, dtype=torch.float32).reshape(n, 1, 6, 6)
    y = torch.arange(n) % 10
    return DeviceBatches(x, y, batch_size=bs, seed=seed, normalize=lambda t: t / 1000, augment=augment, drop_last=True)


def test_len_and_epoch_covers_each_sample_once():
    b = make(augment=None)
    assert len(b) == 12
    ys = torch.cat([y for _, y in b])
    perm = b.permutation(0)[: 12 * 8]
    assert torch.equal(ys, (perm % 10))


def test_resume_mid_epoch_yields_identical_batches():
    ref = make()
    spe = len(ref)
    full = []
    for epoch in range(2):
        ref.step_source = lambda e=epoch: e * spe
        full += list(ref)
    resumed = make()
    resumed.step_source = lambda: 17  # 17 steps already taken: epoch 1, position 5
    rest = list(resumed)
    assert len(rest) == spe - 5
    for (xa, ya), (xb, yb) in zip(full[17:], rest):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_seeds_differ():
    a, b = make(seed=0), make(seed=1)
    assert not torch.equal(next(iter(a))[1], next(iter(b))[1])


def test_identity_crop_without_flip_is_exact():
    x = torch.rand(4, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = random_resized_crop_flip(x, AugmentConfig(crop=True, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0), g)
    torch.testing.assert_close(out, x)


def test_flip_always():
    x = torch.rand(2, 1, 5, 5)
    g = torch.Generator().manual_seed(0)
    out = random_resized_crop_flip(x, AugmentConfig(crop=False, flip_p=1.0), g)
    torch.testing.assert_close(out, x.flip(-1))
