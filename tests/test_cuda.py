"""On a CUDA machine (`make gpu-check` runs these with TRITON_INTERPRET=0): the compiled Triton
loss equals the float64 definition for every registered loss, in fp32, fp16 and bf16; the model
computes the same loss and the same detections on CUDA as on CPU; an AMP training step is
finite. Without CUDA every test here is skipped, saying so."""
import copy

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from focal_det.kernels import select_backend, use_backend
from tests.common import get_tiny_cfg, random_batch
from tests.test_loss_kernels import LOSSES, _float64_definition, _labels, _loss

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("name,extra", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_loss_on_cuda_equals_float64_definition(name, extra, dtype):
    loss = _loss(name, extra)
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(5000, 80, generator=g) * 4 - 2).to(dtype)
    labels = _labels(5000, 80, seed=1)
    ref_value, ref_grad = _float64_definition(loss, x.float(), labels)
    xc = x.cuda().requires_grad_()
    assert select_backend(xc.device) == "triton"
    value = loss(xc, labels.cuda())
    value.backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-3
    torch.testing.assert_close(value.double().cpu(), ref_value, rtol=tol, atol=0)
    torch.testing.assert_close(xc.grad.double().cpu(), ref_grad, rtol=tol * 10, atol=tol)


def test_triton_and_reference_agree_on_cuda():
    loss = _loss("FocalLoss", {})
    x = (torch.randn(20000, 80, device="cuda") * 3 - 2)
    labels = _labels(20000, 80, seed=2).cuda()
    fast = loss(x, labels)
    with use_backend("reference"):
        slow = loss(x, labels)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=0)


def _model(device):
    cfg = get_tiny_cfg()
    cfg.MODEL.DEVICE = device
    torch.manual_seed(0)
    return build_model(cfg)


def test_model_loss_and_detections_on_cuda_equal_cpu():
    cpu, gpu = _model("cpu"), _model("cuda")
    gpu.load_state_dict(cpu.state_dict())
    batch = random_batch(num_images=2, num_classes=3, size=(96, 128))
    cpu.train(), gpu.train()
    with EventStorage():
        lc = cpu(copy.deepcopy(batch))
        lg = gpu([{**b, "image": b["image"].cuda(), "instances": b["instances"].to("cuda")}
                  for b in copy.deepcopy(batch)])
    for k in lc:
        torch.testing.assert_close(lg[k].cpu(), lc[k], rtol=1e-3, atol=1e-4)
    cpu.eval(), gpu.eval()
    with torch.no_grad():
        dc = cpu(copy.deepcopy(batch))[0]["instances"]
        dg = gpu([{"image": batch[0]["image"].cuda()}])[0]["instances"].to("cpu")
    assert len(dc) == len(dg)
    torch.testing.assert_close(dg.scores, dc.scores, rtol=1e-3, atol=1e-4)


def test_amp_training_step_is_finite():
    model = _model("cuda")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batch = [{**b, "image": b["image"].cuda(), "instances": b["instances"].to("cuda")}
             for b in random_batch(num_images=2, num_classes=3, size=(96, 128))]
    model.train()
    scaler = torch.amp.GradScaler("cuda")
    for _ in range(3):
        with EventStorage(), torch.autocast("cuda", dtype=torch.float16):
            losses = model(copy.deepcopy(batch))
        total = sum(losses.values())
        assert torch.isfinite(total)
        opt.zero_grad()
        scaler.scale(total).backward()
        scaler.step(opt)
        scaler.update()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_per_class_kernel_on_cuda_equals_float64_definition(dtype):
    """Equalized Focal Loss's kernel (a focusing parameter and a weight per class) compiled on
    CUDA: loss, gradient and the per-class gradient sums it collects in an fp32 buffer, as the
    loss's own ``_forward_sums``, against the float64 definition (tests/test_efl_kernels.py runs
    the same under the interpreter on the CPU)."""
    import torch.nn.functional as F

    from focal_det.kernels import fused_loss
    from tests import test_efl_kernels as E

    k, rows = 1203, 64
    spec = E._spec(k, seed=k)
    g = torch.Generator().manual_seed(k + 1)
    x = (torch.randn(rows, k, generator=g) * 4 - 1).to(dtype)
    labels = E._labels(rows, k, seed=k)
    t = F.one_hot(labels.clamp_min(0), k + 1)[:, :k]
    ref_per, ref_grad = E._float64_definition(spec, x, t, (labels >= 0).double())
    xc = x.cuda().requires_grad_()
    stats = torch.zeros(2, k, device="cuda")
    assert select_backend(xc.device) == "triton"
    value = fused_loss(xc, spec, "sum", labels=labels.cuda(), stats_out=stats)
    value.backward()
    r_loss, r_grad, _ = E.RTOL[dtype]
    tol = max(r_loss, 1e-5)  # fp32 accumulation on the GPU
    torch.testing.assert_close(value.double().cpu(), ref_per.sum(), rtol=tol, atol=1e-9)
    grad = xc.grad.double().cpu()
    torch.testing.assert_close(grad, ref_grad, rtol=max(r_grad, 2e-5),
                               atol=1e-9 + max(r_grad, 2e-5) * ref_grad.abs().max().item())
    mag, pos = ref_grad.abs(), t.bool()
    r = max(r_grad, 1e-4)
    for row, want in ((0, (mag * pos).sum(0)), (1, (mag * ~pos).sum(0))):
        torch.testing.assert_close(stats[row].double().cpu(), want, rtol=r,
                                   atol=1e-9 + r * mag.max().item())
