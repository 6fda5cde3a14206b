"""The per-class kernels (a focusing parameter and a weight per class: Equalized Focal Loss) on
every backend (C++ operator, Triton kernel under TRITON_INTERPRET=1, plain-PyTorch reference)
and in every dtype: loss and gradient equal a float64 definition; the per-class sums of the
gradient's magnitude equal autograd's logit gradients split by label; deterministic sums; a
constant number of dispatched ops and no host sync; the FL path's ops unchanged."""
import pytest
import torch
import torch.nn.functional as F

import focal_det  # noqa: F401  (registers the losses)
from focal_det.kernels import LossSpec, fused_loss, use_backend
from focal_det.utils.op_count import count_ops

BACKENDS = ["native", "triton", "reference"]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
# (loss, gradient, gradient sums) tolerances: half dtypes round the returned gradient
RTOL = {torch.float64: (1e-12, 1e-12, 1e-12), torch.float32: (2e-6, 2e-5, 2e-5),
        torch.bfloat16: (2e-6, 8e-3, 4e-3), torch.float16: (2e-6, 1e-3, 1e-3)}


def _labels(rows, k, seed, fg=0.2, ignored=0.1):
    g = torch.Generator().manual_seed(seed)
    labels = torch.full((rows,), k)
    u = torch.rand(rows, generator=g)
    labels[u < fg] = torch.randint(0, k, (int((u < fg).sum()),), generator=g)
    labels[u > 1 - ignored] = -1
    return labels


def _spec(k, seed, alpha=0.25, class_alpha=False, weight=True):
    g = torch.Generator().manual_seed(seed)
    gamma = 2.0 + 8.0 * torch.rand(k, generator=g)  # gamma_b + s (1 - g_j), g_j in [0, 1]
    gamma[0] = 2.0  # a class at g = 1 (plain FL)
    per_alpha = torch.rand(k, generator=g, dtype=torch.float64) if class_alpha else None
    return LossSpec(False, 2.0, alpha, class_alpha=per_alpha, class_gamma=gamma,
                    class_weight=gamma / 2.0 if weight else None)


def _float64_definition(spec, x, targets, valid):
    """Loss and gradient from the formula with autograd, float64: weight alpha_t (1 - p_t)^g_j
    (-log p_t) for soft targets (binary ones are the label path)."""
    x = x.double().detach().requires_grad_()
    t = targets.double()
    if spec.class_alpha is not None:
        a = spec.class_alpha.double()
    else:
        a = torch.full((x.shape[1],), spec.alpha, dtype=torch.float64)
    a_t = t * (2 * a - 1) + (1 - a) if spec.alpha >= 0 or spec.class_alpha is not None else 1.0
    w = spec.class_weight.double() if spec.class_weight is not None else 1.0
    p = torch.sigmoid(x)
    q = t * (1 - p) + (1 - t) * p
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    per = w * a_t * q ** spec.class_gamma.double() * ce * valid[:, None]
    per.sum().backward()
    return per.detach(), x.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,rows", [(1, 300), (7, 120), (1203, 9)])
def test_label_path_and_gradient_sums_equal_the_float64_definition(backend, dtype, k, rows):
    spec = _spec(k, seed=k, class_alpha=k == 7)
    g = torch.Generator().manual_seed(k + 1)
    x = (torch.randn(rows, k, generator=g) * 4 - 1).to(dtype)  # the values the kernel reads
    labels = _labels(rows, k, seed=k)
    t = F.one_hot(labels.clamp_min(0), k + 1)[:, :k]
    ref_per, ref_grad = _float64_definition(spec, x, t, (labels >= 0).double())
    xx = x.clone().requires_grad_()
    stats = torch.zeros(2, k, dtype=torch.float64)
    with use_backend(backend):
        value = fused_loss(xx, spec, "sum", labels=labels, stats_out=stats)
    value.backward()
    r_loss, r_grad, r_stats = RTOL[dtype]
    torch.testing.assert_close(value.double(), ref_per.sum(), rtol=r_loss, atol=1e-12)
    torch.testing.assert_close(xx.grad.double(), ref_grad, rtol=r_grad, atol=1e-12 + r_grad
                               * ref_grad.abs().max().item())
    mag, pos = ref_grad.abs(), t.bool()
    torch.testing.assert_close(stats[0], (mag * pos).sum(0), rtol=r_stats, atol=1e-12)
    torch.testing.assert_close(stats[1], (mag * ~pos).sum(0), rtol=r_stats, atol=1e-12)
    # and autograd's own (rounded) logit gradient, split by label, gives the same sums
    got = xx.grad.double().abs()  # half: subnormal gradients have few bits, hence the atol
    atol = 1e-12 + r_grad * got.max().item()
    torch.testing.assert_close(stats[0], (got * pos).sum(0), rtol=r_grad, atol=atol)
    torch.testing.assert_close(stats[1], (got * ~pos).sum(0), rtol=r_grad, atol=atol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_soft_targets_every_reduction(backend, dtype, reduction):
    k, rows = 5, 40
    spec = _spec(k, seed=3, alpha=-1.0 if reduction == "mean" else 0.25)
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(rows, k, generator=g) * 3).to(dtype)
    targets = torch.rand(rows, k, generator=g)
    targets[::3] = (targets[::3] > 0.5).float()  # binary rows too
    ref_per, ref_grad = _float64_definition(spec, x, targets, torch.ones(rows))
    xx = x.clone().requires_grad_()
    with use_backend(backend):
        out = fused_loss(xx, spec, reduction, targets=targets)
    (out.sum() if reduction == "none" else out).backward()
    expected = {"none": ref_per, "sum": ref_per.sum(), "mean": ref_per.mean()}[reduction]
    n = ref_per.numel() if reduction == "mean" else 1
    r_grad = RTOL[dtype][1]
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(xx.grad.double() * n, ref_grad, rtol=r_grad,
                               atol=r_grad * ref_grad.abs().max().item())


@pytest.mark.parametrize("backend", BACKENDS)
def test_statistics_without_gradient_and_ignored_rows(backend):
    """Sums come with need_grad false too; an all-ignored batch adds nothing; background rows
    are negatives of every class."""
    k = 4
    spec = _spec(k, seed=5)
    x = torch.randn(30, k)
    stats = torch.zeros(2, k)
    with use_backend(backend):
        fused_loss(x, spec, "sum", labels=torch.full((30,), -1), stats_out=stats)
        assert not stats.any()
        fused_loss(x, spec, "sum", labels=torch.full((30,), k), stats_out=stats)
    assert not stats[0].any() and (stats[1] > 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_sums_are_deterministic(backend):
    k = 80
    spec = _spec(k, seed=6)
    x = torch.randn(3000, k, generator=torch.Generator().manual_seed(0))
    labels = _labels(3000, k, seed=1)
    results = []
    for _ in range(3):
        stats = torch.zeros(2, k, dtype=torch.float64)
        with use_backend(backend):
            value = fused_loss(x.clone(), spec, "sum", labels=labels.clone(), stats_out=stats)
        results.append((value, stats))
    assert all(torch.equal(v, results[0][0]) and torch.equal(s, results[0][1])
               for v, s in results[1:])


def test_native_sums_do_not_depend_on_the_thread_count():
    k = 80
    spec = _spec(k, seed=7)
    x = torch.randn(20000, k, generator=torch.Generator().manual_seed(0)).requires_grad_()
    labels = _labels(20000, k, seed=2)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            stats = torch.zeros(2, k, dtype=torch.float64)
            with use_backend("native"):
                value = fused_loss(x, spec, "sum", labels=labels, stats_out=stats)
                value.backward()
            results.append((value.detach().clone(), x.grad.clone(), stats))
            x.grad = None
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(other, results[0]))


@pytest.mark.parametrize("backend", ["native", "triton"])
def test_dispatched_ops_are_constant_and_sync_free(backend):
    spec = _spec(80, seed=8)
    counts = []
    for rows in (100, 5000):
        x = torch.randn(rows, 80).requires_grad_()
        labels = _labels(rows, 80, seed=rows)
        stats = torch.zeros(2, 80)

        def step():
            with use_backend(backend):
                fused_loss(x, spec, "sum", labels=labels, stats_out=stats).backward()
        counts.append(count_ops(step))
    assert counts[0].ops == counts[1].ops, [c.as_dict() for c in counts]
    if backend == "native":  # the interpreter adds its own host copies to Triton's count
        assert counts[0].syncs == 0, counts[0].as_dict()
        assert counts[0].ops <= 12, counts[0].as_dict()


def test_the_fl_path_still_calls_the_fl_operator():
    """A spec without a per-class gamma runs FL's own operator (its op count is unchanged)."""
    x = torch.randn(50, 4).requires_grad_()
    labels = _labels(50, 4, seed=0)

    def step():
        with use_backend("native"):
            fused_loss(x, LossSpec(False, 2.0, 0.25), "sum", labels=labels).backward()
    c = count_ops(step)
    assert c.by_name.get("focal_det::sigmoid_loss") == 1
    assert "focal_det::sigmoid_loss_per_class" not in c.by_name and c.syncs == 0


def test_statistics_need_labels_and_a_per_class_spec():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="stats_out needs labels"):
        fused_loss(x, _spec(3, 0), "sum", targets=torch.zeros(4, 3), stats_out=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="stats_out needs labels"):
        fused_loss(x, LossSpec(False, 2.0, 0.25), "sum", labels=torch.zeros(4).long(),
                   stats_out=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="gamma has 3 per-class values, but the logits have K = 5"):
        fused_loss(torch.randn(4, 5), _spec(3, 0), "sum", labels=torch.zeros(4).long())
