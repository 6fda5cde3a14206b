"""The fused loss backends (C++ operator, Triton kernel, plain-PyTorch reference): the same
numbers as a float64 definition for every registered loss, K = 1, 80 and 1203, ignored rows and
images without objects; deterministic sums; a constant number of dispatched ops per call;
backward one multiply; clear errors for an unavailable backend."""
import pytest
import torch
import torch.nn.functional as F

import focal_det  # noqa: F401  (registers the losses)
from focal_det import kernels
from focal_det.kernels import backend
from focal_det.kernels import LossSpec, fused_loss, use_backend
from focal_det.losses import build_cls_loss
from focal_det.utils.op_count import count_ops
from focal_det import get_cfg as make_cfg

BACKENDS = ["native", "triton", "reference"]
LOSSES = [("FocalLoss", {}), ("FocalLoss", {"GAMMA": 0.5, "ALPHA": 0.75}),
          ("FocalLossStar", {"GAMMA": 2.0, "BETA": 1.0}), ("FocalLossStar", {"GAMMA": 4.0, "BETA": 0.0}),
          ("CrossEntropy", {}), ("BalancedCrossEntropy", {"ALPHA": 0.75})]


def _loss(name, extra):
    cfg = make_cfg()
    cfg.MODEL.FOCAL_DET.CLS_LOSS.NAME = name
    for k, v in extra.items():
        setattr(cfg.MODEL.FOCAL_DET.CLS_LOSS, k, v)
    return build_cls_loss(cfg)


def _float64_definition(loss, x, labels):
    """The loss from the paper's formulas with autograd, float64, one-hot targets."""
    k = x.shape[1]
    x = x.double().detach().requires_grad_()
    valid = labels >= 0
    t = F.one_hot(labels.clamp_min(0), k + 1)[:, :k].double()
    spec = loss.spec()
    y = 2 * t - 1
    a_t = t * (2 * spec.alpha - 1) + (1 - spec.alpha) if spec.alpha >= 0 else torch.ones_like(t)
    if spec.star:
        per = -F.logsigmoid(spec.gamma * x * y + spec.beta) / spec.gamma
    else:
        p_t = torch.sigmoid(x * y)
        per = -F.logsigmoid(x * y) * (1 - p_t) ** spec.gamma
    total = (a_t * per * valid[:, None]).sum()
    total.backward()
    return total.detach(), x.grad


def _labels(rows, k, seed, fg=0.05, ignored=0.03):
    g = torch.Generator().manual_seed(seed)
    labels = torch.full((rows,), k)
    u = torch.rand(rows, generator=g)
    labels[u < fg] = torch.randint(0, k, (int((u < fg).sum()),), generator=g)
    labels[u > 1 - ignored] = -1
    return labels


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,extra", LOSSES)
@pytest.mark.parametrize("k,rows", [(1, 2000), (80, 300), (1203, 40)])
def test_label_path_equals_float64_definition(backend, name, extra, k, rows):
    loss = _loss(name, extra)
    g = torch.Generator().manual_seed(k)
    x = torch.randn(rows, k, generator=g) * 4 - 2
    labels = _labels(rows, k, seed=k)
    ref_value, ref_grad = _float64_definition(loss, x, labels)
    xx = x.clone().requires_grad_()
    with use_backend(backend):
        value = loss(xx, labels)
        value.backward()
    assert value.dtype == torch.float32
    torch.testing.assert_close(value.double(), ref_value, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(xx.grad.double(), ref_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_image_without_objects_and_all_ignored(backend):
    loss = _loss("FocalLoss", {})
    x = torch.randn(64, 80).requires_grad_()
    background = torch.full((64,), 80)
    with use_backend(backend):
        value = loss(x, background)
        value.backward()
    ref_value, ref_grad = _float64_definition(loss, x, background)
    torch.testing.assert_close(value.double(), ref_value, rtol=2e-6, atol=0)
    torch.testing.assert_close(x.grad.double(), ref_grad, rtol=1e-5, atol=1e-7)
    x.grad = None
    with use_backend(backend):
        value = loss(x, torch.full((64,), -1))
        value.backward()
    assert value.item() == 0.0 and not x.grad.any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_logits_huge_values_stay_finite(backend, dtype):
    loss = _loss("FocalLoss", {})
    x = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0]]).to(dtype).requires_grad_()
    labels = torch.tensor([0, 1])
    with use_backend(backend):
        value = loss(x, labels)
        value.backward()
    assert value.dtype == torch.float32 and x.grad.dtype == dtype
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()
    ref_value, _ = _float64_definition(loss, x.detach().float(), labels)
    torch.testing.assert_close(value.double(), ref_value, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sum_is_deterministic(backend):
    """Same inputs, same bits (exact resume relies on it)."""
    loss = _loss("FocalLoss", {})
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 80, generator=g)
    labels = _labels(3000, 80, seed=1)
    with use_backend(backend):
        first = loss(x, labels)
        again = [loss(x.clone(), labels.clone()) for _ in range(3)]
    assert all(torch.equal(first, a) for a in again)


def test_native_sum_does_not_depend_on_the_thread_count():
    loss = _loss("FocalLoss", {})
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 80, generator=g).requires_grad_()
    labels = _labels(20000, 80, seed=2)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            with use_backend("native"):
                value = loss(x, labels)
                value.backward()
            results.append((value.detach().clone(), x.grad.clone()))
            x.grad = None
    finally:
        torch.set_num_threads(threads)
    for value, grad in results[1:]:
        assert torch.equal(value, results[0][0]) and torch.equal(grad, results[0][1])


@pytest.mark.parametrize("backend", ["native", "triton"])
def test_dispatched_ops_do_not_grow_with_the_number_of_anchors(backend):
    loss = _loss("FocalLoss", {})
    counts = []
    for rows in (100, 5000):
        x = torch.randn(rows, 80).requires_grad_()
        labels = _labels(rows, 80, seed=rows)

        def step():
            with use_backend(backend):
                loss(x, labels).backward()
        counts.append(count_ops(step).ops)
    assert counts[0] == counts[1], counts
    if backend == "native":  # (the interpreter adds its own host copies to Triton's count)
        assert counts[0] <= 8, counts


def test_backward_is_one_multiply():
    x = torch.randn(50, 4).requires_grad_()
    with use_backend("native"):
        value = fused_loss(x, LossSpec(False, 2.0, 0.25), "sum", labels=_labels(50, 4, seed=0))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        value.backward()
    names = [e.name for e in prof.events() if e.name.startswith("aten::") and
             (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    assert names.count("aten::mul") == 1
    assert not {"aten::sigmoid", "aten::exp", "aten::log", "aten::softplus"} & set(names)


def test_op_counter_sees_syncs_and_ops():
    x = torch.randn(10)

    def fn():
        y = x[x > 0]  # boolean indexing: nonzero
        float(y.sum())  # .item()
        (x * 2).tolist()
        return y
    c = count_ops(fn)
    assert c.syncs == 3, c.as_dict()
    assert c.ops >= 5


def test_native_extension_is_built_and_chosen_on_cpu():
    """`make test` builds focal_det._C; without it the CPU loss would silently be slow."""
    assert kernels.native_available()
    assert kernels.select_backend(torch.device("cpu")) == "native"


def test_unavailable_or_unknown_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("FOCAL_DET_LOSS_BACKEND", "fastest")
    with pytest.raises(ValueError, match="FOCAL_DET_LOSS_BACKEND='fastest'"):
        kernels.select_backend(torch.device("cpu"))
    monkeypatch.setenv("FOCAL_DET_LOSS_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels.select_backend(torch.device("cpu"))
    monkeypatch.setenv("FOCAL_DET_LOSS_BACKEND", "native")
    monkeypatch.setattr(backend, "native_available", lambda: False)
    with pytest.raises(RuntimeError, match="focal_det._C is not built"):
        kernels.select_backend(torch.device("cpu"))
    monkeypatch.setenv("FOCAL_DET_LOSS_BACKEND", "auto")
    assert kernels.select_backend(torch.device("cpu")) == "reference"  # the clean fallback


def test_users_plain_pytorch_kernel_still_runs():
    """A registered loss that defines only kernel() (no LossSpec) runs on the reference path."""
    from focal_det.losses import SigmoidClassificationLoss
    from focal_det.kernels.reference import focal_loss_kernel

    class MyLoss(SigmoidClassificationLoss):
        def kernel(self):
            return focal_loss_kernel(2.0, 0.25)

    x = torch.randn(30, 5).requires_grad_()
    labels = _labels(30, 5, seed=4)
    ours = MyLoss()(x, labels)
    builtin = _loss("FocalLoss", {})(x.detach(), labels)
    torch.testing.assert_close(ours, builtin, rtol=1e-6, atol=0)
    ours.backward()
    assert x.grad.abs().sum() > 0


def test_auto_selected_triton_that_cannot_compile_falls_back_with_a_warning(monkeypatch):
    """On a GPU machine where Triton cannot build its launcher, the loss is still computed
    (by the reference, same numbers) and a warning says why; simulated here on CPU."""
    import logging

    from focal_det.kernels import triton_loss

    def broken(*args, **kwargs):
        raise RuntimeError("Failed to find C compiler")

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("focal_det.kernels").addHandler(handler)
    monkeypatch.setattr(triton_loss, "sigmoid_loss", broken)
    monkeypatch.setattr(backend.TRITON_STATE, "failure", None)
    monkeypatch.setenv("FOCAL_DET_LOSS_BACKEND", "auto")
    x = torch.randn(40, 5).requires_grad_()
    labels = _labels(40, 5, seed=6)
    spec = LossSpec(False, 2.0, 0.25)
    try:
        got = kernels._FusedLoss.apply(x, labels, None, spec, "sum", "triton")
    finally:
        logging.getLogger("focal_det.kernels").removeHandler(handler)
    with use_backend("reference"):
        expected = fused_loss(x, spec, "sum", labels=labels)
    torch.testing.assert_close(got, expected)
    assert any("could not run" in r.getMessage() for r in records)
    assert backend.TRITON_STATE.failure is not None  # later calls go straight to the fallback
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert kernels.select_backend(torch.device("cuda")) == "reference"
    with pytest.raises(RuntimeError, match="C compiler"):  # a forced backend never hides it
        with use_backend("triton"):
            kernels._FusedLoss.apply(x, labels, None, spec, "sum", "triton")


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_a_sum_beyond_float_range_is_inf_not_an_error(backend_name):
    """A diverging run's loss can exceed float's range (logits ~1e36 summed over anchors): the
    sum is inf, as torch's own float sum is, so Detectron2's NaN/inf check reports divergence
    (the C++ operator used to raise "value cannot be converted to type float")."""
    x = torch.full((64, 8), 3e37)
    labels = torch.zeros(64, dtype=torch.long)
    spec = _loss("CrossEntropy", {}).spec()
    with use_backend(backend_name):  # Triton runs interpreted on the CPU (conftest)
        loss = fused_loss(x, spec, "sum", labels=labels)
    assert loss.dtype == torch.float32 and torch.isinf(loss) and loss > 0
