"""Known-answer tests of lambda_max and Hutch++ against exact Hessians of small models."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _monitor_models import bn_net, clustered_data, exact_hessian, flat_params, loss_fn, mlp

from loss_slope.metrics import curvature as C
from loss_slope.metrics.errors import CurvatureError


def trained_mlp(seed: int, steps: int = 300):
    """A briefly trained MLP: its Hessian has a few dominant positive eigenvalues, as real nets do."""
    model, batches = mlp(seed), clustered_data(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        sum(loss_fn(model(x), y) * 0.5 for x, y in batches).backward()
        opt.step()
    for p in model.parameters():
        p.grad = None
    return model, batches


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def mlps():
    return {s: trained_mlp(s) for s in range(6)}


@pytest.mark.parametrize("seed", range(6))
def test_lambda_max_matches_exact_top_eigenvalue_mlp(mlps, seed):
    model, batches = mlps[seed]
    top = torch.linalg.eigvalsh(exact_hessian(model, batches))[-1].item()
    got = C.lambda_max(model, loss_fn, batches, generator=gen(seed))
    assert got.value == pytest.approx(top, rel=0.02)
    assert 5 <= got.iterations <= 20
    assert got.seconds > 0


@pytest.mark.parametrize("seed", range(4))
def test_lambda_max_and_trace_on_batchnorm_net_in_eval_mode(seed):
    model, batches = bn_net(seed)
    hessian = exact_hessian(model, batches)  # of the eval-mode (running-statistics) loss
    top = torch.linalg.eigvalsh(hessian)[-1].item()
    got = C.curvature(model, loss_fn, batches, generator=gen(seed))
    assert got.lambda_max.value == pytest.approx(top, rel=0.02)
    trace = hessian.trace().item()
    assert abs(got.trace.value - trace) < 4 * got.trace.std_error


def test_hutchpp_within_ten_percent_and_consistent_with_its_error(mlps):
    z = []
    for seed, (model, batches) in mlps.items():
        trace = exact_hessian(model, batches).trace().item()
        for k in range(5):
            got = C.hutch_trace(model, loss_fn, batches, matvecs=50, generator=gen(100 * seed + k))
            assert got.matvecs == 50
            assert got.value == pytest.approx(trace, rel=0.10)
            assert got.variance == pytest.approx(got.std_error**2)
            z.append((got.value - trace) / got.std_error)
    z = np.array(z)
    assert np.all(np.abs(z) < 4.5)
    # 30 draws; calibrated, z is about Student t on r - 1 df (r residual probes): E[z²] = (r - 1)/(r - 3) ≈ 1.1
    assert 0.4 < np.mean(z**2) < 2.0


class _MatrixOperator:
    """Stands in for the Hessian operator: a fixed symmetric matrix."""

    def __init__(self, a: torch.Tensor) -> None:
        self.a, self.dim, self.device, self.dtype, self.matvecs = a, a.shape[0], a.device, a.dtype, 0

    def matmat(self, v: torch.Tensor) -> torch.Tensor:
        self.matvecs += v.shape[0]
        return v @ self.a


def test_hutchpp_is_unbiased_with_calibrated_standard_error():
    g = gen(7)
    d = 300
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    eig = 10.0 / torch.arange(1, d + 1, dtype=torch.float64) ** 1.2  # a few dominant eigenvalues, long tail
    a = (q * eig) @ q.T
    estimates, errors = [], []
    for seed in range(300):
        value, se, ritz, u, hu = C._hutchpp(_MatrixOperator(a), matvecs=50, generator=gen(seed))
        torch.testing.assert_close(hu, a @ u)  # the free first Lanczos product
        estimates.append(value)
        errors.append(se)
        assert ritz <= eig[0].item() + 1e-9
    estimates, errors = np.array(estimates), np.array(errors)
    truth = eig.sum().item()
    assert abs(estimates.mean() - truth) < 4 * estimates.std() / np.sqrt(len(estimates))
    assert np.sqrt(np.mean(errors**2)) == pytest.approx(estimates.std(), rel=0.2)
    assert np.all(np.abs(estimates - truth) / truth < 0.10)


def test_batchnorm_state_modes_and_grads_are_left_as_they_were():
    model, batches = bn_net(0)
    model.bn2.eval()  # a deliberately frozen BN inside a training model must stay frozen
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    weights = flat_params(model).clone()
    modes = {n: m.training for n, m in model.named_modules()}
    model.head.weight.grad = torch.full_like(model.head.weight, 0.25)  # mid-step: some grads exist
    C.curvature(model, loss_fn, batches, generator=gen(0))
    C.lambda_max(model, loss_fn, batches, generator=gen(1), keep_graphs=False)
    C.hutch_trace(model, loss_fn, batches, generator=gen(2))
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    assert torch.equal(flat_params(model), weights)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert torch.equal(model.head.weight.grad, torch.full_like(model.head.weight, 0.25))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "head.weight")
    assert all(p.requires_grad for p in model.parameters())


def test_frozen_parameters_are_excluded_and_untouched():
    model, batches = bn_net(1)
    model.conv1.weight.requires_grad_(False)
    got = C.lambda_max(model, loss_fn, batches, generator=gen(0))
    top = torch.linalg.eigvalsh(exact_hessian(model, batches))[-1].item()  # trainable params only
    assert got.value == pytest.approx(top, rel=0.02)
    assert model.conv1.weight.grad is None and not model.conv1.weight.requires_grad


def test_same_generator_seed_gives_identical_results_and_graph_reuse_changes_nothing(mlps):
    model, batches = mlps[0]
    a = C.curvature(model, loss_fn, batches, generator=gen(3))
    b = C.curvature(model, loss_fn, batches, generator=gen(3))
    c = C.curvature(model, loss_fn, batches, generator=gen(3), keep_graphs=False)
    assert (a.lambda_max.value, a.trace.value) == (b.lambda_max.value, b.trace.value)
    assert c.lambda_max.value == pytest.approx(a.lambda_max.value, rel=1e-10)
    assert c.trace.value == pytest.approx(a.trace.value, rel=1e-10)


def test_vmapped_blocks_of_products_give_the_same_answer():
    model, batches = bn_net(2)  # conv and BatchNorm double backward under vmap
    one = C.curvature(model, loss_fn, batches, generator=gen(5))
    for block in (4, 50):
        blocked = C.curvature(model, loss_fn, batches, generator=gen(5), matvec_block=block)
        assert blocked.trace.value == pytest.approx(one.trace.value, rel=1e-10)
        assert blocked.lambda_max.value == pytest.approx(one.lambda_max.value, rel=1e-10)
        assert blocked.trace.matvecs == one.trace.matvecs


def test_ritz_warm_start_converges_at_the_minimum_iterations(mlps):
    model, batches = mlps[1]
    top = torch.linalg.eigvalsh(exact_hessian(model, batches))[-1].item()
    got = C.curvature(model, loss_fn, batches, generator=gen(0))
    assert got.lambda_max.converged and got.lambda_max.iterations == 5
    assert got.lambda_max.matvecs == 4  # the first product comes from Hutch++'s H Q
    assert got.lambda_max.value == pytest.approx(top, rel=0.02)
    assert got.trace.top_ritz_value <= top + 1e-12


def test_float32_model_and_inputs_respect_dtype(mlps):
    model64, batches64 = mlps[2]
    top = torch.linalg.eigvalsh(exact_hessian(model64, batches64))[-1].item()
    model32 = copy.deepcopy(model64).float()
    got = C.lambda_max(model32, loss_fn, batches64, generator=gen(0))  # float64 inputs are cast to float32
    assert got.value == pytest.approx(top, rel=0.02)


def test_unconverged_power_iteration_says_so(mlps):
    model, batches = mlps[1]
    got = C.lambda_max(model, loss_fn, batches, iters=2, min_iters=2, tol=1e-12, generator=gen(0))
    assert got.iterations == 2 and not got.converged


def test_domain_errors():
    model, batches = bn_net(0)
    with pytest.raises(CurvatureError, match="no curvature batches"):
        C.lambda_max(model, loss_fn, [])
    with pytest.raises(CurvatureError, match="inference_mode"), torch.inference_mode():
        C.lambda_max(model, loss_fn, batches)
    with pytest.raises(CurvatureError, match="at least 3"):
        C.hutch_trace(model, loss_fn, batches, matvecs=2)
    # fewer vectors than the convergence test waits for: it could never say converged
    with pytest.raises(CurvatureError, match="min_iters=5, iters=3"):
        C.lambda_max(model, loss_fn, batches, iters=3)
    with pytest.raises(CurvatureError, match="min_iters=5, iters=3"):
        C.curvature(model, loss_fn, batches, matvecs=9, iters=3)
    assert model.training  # mode restored after an error inside the probe
    mixed = copy.deepcopy(model)
    mixed.head.float()
    with pytest.raises(CurvatureError, match="mixed dtypes"):
        C.lambda_max(mixed, loss_fn, batches)


class _CompiledStandIn(torch.nn.Module):
    """Mimics torch.compile's OptimizedModule, whose forward cannot be double-backpropagated."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self._orig_mod = inner

    def forward(self, x):
        raise AssertionError("the compiled forward must not be used for Hessian products")


def test_compiled_wrapper_is_probed_through_the_eager_module(mlps):
    model, batches = mlps[3]
    eager = C.lambda_max(model, loss_fn, batches, generator=gen(0))
    wrapped = C.lambda_max(_CompiledStandIn(model), loss_fn, batches, generator=gen(0))
    assert wrapped.value == eager.value


def test_fixed_batches_are_fixed_distinct_and_sized():
    x, y = torch.arange(100.0).view(100, 1), torch.arange(100)
    a = C.fixed_batches(x, y, n_batches=3, batch_size=8, seed=4)
    b = C.fixed_batches(x, y, n_batches=3, batch_size=8, seed=4)
    assert [len(xb) for xb, _ in a] == [8, 8, 8]
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b))
    picked = torch.cat([yb for _, yb in a])
    assert len(set(picked.tolist())) == 24
    assert all(torch.equal(xb.view(-1).long(), yb) for xb, yb in a)
    with pytest.raises(CurvatureError):
        C.fixed_batches(x, y, n_batches=20, batch_size=8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(mlps):
    model, batches = mlps[0]
    cpu = C.curvature(model, loss_fn, batches, generator=gen(0))
    cuda = C.curvature(copy.deepcopy(model).cuda(), loss_fn, batches, generator=gen(0))  # CPU generator, CUDA params
    assert cuda.lambda_max.value == pytest.approx(cpu.lambda_max.value, rel=1e-6)
    assert cuda.trace.value == pytest.approx(cpu.trace.value, rel=1e-6)


def test_free_first_product_changes_nothing_but_the_count(mlps):
    model, batches = mlps[4]
    both = C.curvature(model, loss_fn, batches, generator=gen(1))
    with C._probe(model) as net:
        op = C._HessianOperator(net, loss_fn, batches, C._trainable(net), keep_graphs=True)
        _, _, _, u, hu = C._hutchpp(op, matvecs=50, generator=gen(1))
        torch.testing.assert_close(hu, op.matmat(u.unsqueeze(0))[0], rtol=1e-9, atol=1e-12)
        before = op.matvecs
        value, residual, bottom, it, _ = C._lanczos(op, u, iters=20, tol=1e-3, min_iters=5)  # pays for H u
    assert op.matvecs - before == it == both.lambda_max.iterations
    assert both.lambda_max.value == pytest.approx(value, rel=1e-9)
    assert both.lambda_max.bottom == pytest.approx(bottom, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_affine_batchnorm_is_the_eval_mode_function_and_is_restored(dtype):
    model, batches = bn_net(3, dtype=dtype)
    x = batches[0][0]
    model.bn2.weight.requires_grad_(False)  # frozen affine parameters stay frozen
    with C.evaluation_mode(model):
        native = model(x)
        with C.affine_batchnorm(model) as changed:
            assert changed == 2
            affine = model(x)
        assert "forward" not in vars(model.bn1) and "forward" not in vars(model.bn2)
    torch.testing.assert_close(affine, native)
    # a train-mode BatchNorm uses batch statistics: left alone
    with C.affine_batchnorm(model) as changed:
        assert changed == 0
    assert model.training


def test_hessian_with_affine_batchnorm_matches_native_products():
    model, batches = bn_net(1)
    v = torch.randn(1, flat_params(model).numel(), generator=gen(0), dtype=torch.float64)
    params = [p for p in model.parameters() if p.requires_grad]
    with C.evaluation_mode(model):
        native = C._HessianOperator(model, loss_fn, batches, params, keep_graphs=False).matmat(v)
    with C._probe(model) as net:  # affine BatchNorm inside
        affine = C._HessianOperator(net, loss_fn, batches, params, keep_graphs=False).matmat(v)
    torch.testing.assert_close(affine, native, rtol=1e-10, atol=1e-12)


# ---- Lanczos: the algebraically largest eigenvalue, with a certificate ------------------------


def _reference_cases():
    """(name, model, batches): no BatchNorm trained, no BatchNorm untrained with an indefinite Hessian
    whose most negative eigenvalue is the largest in magnitude, and BatchNorm (eval mode)."""
    trained, tb = trained_mlp(3)
    indefinite, ib = mlp(2), clustered_data(2)
    bn, bb = bn_net(5)
    return [("mlp trained", trained, tb), ("mlp indefinite", indefinite, ib), ("bn net", bn, bb)]


@pytest.fixture(scope="module")
def reference_cases():
    out = []
    for name, model, batches in _reference_cases():
        h = exact_hessian(model, batches)
        out.append((name, model, batches, torch.linalg.eigvalsh(h), h.trace().item()))
    return out


def test_the_indefinite_case_is_one_where_power_iteration_fails(reference_cases):
    _, _, _, evals, _ = reference_cases[1]
    assert -evals[0] > 1.3 * evals[-1] > 0  # largest magnitude is negative: power iteration would return it


@pytest.mark.parametrize("case", range(3))
@pytest.mark.parametrize("seed", range(3))
def test_curvature_against_the_exact_hessian(reference_cases, case, seed):
    name, model, batches, evals, trace = reference_cases[case]
    got = C.curvature(model, loss_fn, batches, matvecs=50, generator=gen(seed))
    top, bottom = evals[-1].item(), evals[0].item()
    lam = got.lambda_max
    assert lam.value == pytest.approx(top, rel=0.01), name
    assert lam.value <= top + 1e-9  # a Ritz value never exceeds the top eigenvalue
    assert lam.converged and lam.residual <= 1e-3
    assert lam.iterations <= 20 and lam.matvecs == lam.iterations - 1  # the first vector's product is free
    assert got.trace.matvecs + lam.matvecs <= 50 + 19  # never more products than 50 + (20 - 1) power iterations
    assert bottom - 1e-9 <= lam.bottom <= top
    assert abs(got.trace.value - trace) < 3 * got.trace.std_error, name


def test_residual_certificate_bounds_the_distance_to_an_eigenvalue():
    g = gen(11)
    d = 200
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    eig = torch.linspace(-3.0, 2.0, d, dtype=torch.float64)  # indefinite, |bottom| > top, no gap to speak of
    a = (q * eig) @ q.T
    op = _MatrixOperator(a)
    v0 = torch.randn(d, generator=g, dtype=torch.float64)
    for iters in (3, 6, 12, 40):
        top, residual, bottom, k, converged = C._lanczos(op, v0, iters=iters, tol=1e-12, min_iters=1)
        assert k == iters and top <= 2.0 + 1e-12 and bottom >= -3.0 - 1e-12
        assert (eig - top).abs().min().item() <= residual * abs(top) + 1e-10  # some eigenvalue within the residual
    assert top == pytest.approx(2.0, rel=1e-3) and bottom == pytest.approx(-3.0, rel=1e-3)


def test_lanczos_stops_on_an_invariant_subspace():
    a = torch.diag(torch.tensor([3.0, -1.0, 0.5, 0.0], dtype=torch.float64))
    op = _MatrixOperator(a)
    top, residual, bottom, k, converged = C._lanczos(
        op, torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64), iters=10, tol=1e-12, min_iters=1
    )
    assert converged and k == 2 and residual == 0.0
    assert top == pytest.approx(3.0) and bottom == pytest.approx(-1.0)
