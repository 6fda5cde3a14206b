"""Alpha per class (MODEL.FOCAL_DET.CLS_LOSS.ALPHA_PER_CLASS, or alpha=[K values]): positives of
class k weigh alpha[k], its negatives 1 - alpha[k]; every backend equals the float64 definition
(label path and target path, FL, balanced CE, FL*); one value for all classes equals the scalar
alpha; a list of the wrong length is an error naming K."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

from focal_det.kernels import use_backend
from focal_det.losses import BalancedCrossEntropy, FocalLoss, FocalLossStar, build_cls_loss
from tests.common import get_tiny_cfg

BACKENDS = ["native", "triton", "reference"]
ALPHA = [0.1, 0.25, 0.5, 0.9, 0.75]


def _data(k=5, rows=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g) * 4 - 1
    labels = torch.randint(0, k + 1, (rows,), generator=g)
    labels[torch.rand(rows, generator=g) < 0.05] = -1
    return x, labels


def _float64(loss, x, labels, alpha):
    """The paper's formulas with autograd, float64, one-hot targets, alpha per column."""
    k = x.shape[1]
    x = x.double().detach().requires_grad_()
    t = F.one_hot(labels.clamp_min(0), k + 1)[:, :k].double()
    a = torch.tensor(alpha, dtype=torch.float64)
    a_t = t * a + (1 - t) * (1 - a)
    y = 2 * t - 1
    if isinstance(loss, FocalLossStar):
        per = -F.logsigmoid(loss.gamma * x * y + loss.beta) / loss.gamma
    else:
        per = -F.logsigmoid(x * y) * (1 - torch.sigmoid(x * y)) ** loss.gamma
    total = (a_t * per * (labels >= 0)[:, None]).sum()
    total.backward()
    return total.detach(), x.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", [FocalLoss(gamma=2.0, alpha=ALPHA), BalancedCrossEntropy(alpha=ALPHA),
                                  FocalLoss(gamma=0.5, alpha=ALPHA),
                                  FocalLossStar(gamma=2.0, beta=1.0, alpha=ALPHA)],
                         ids=["FL", "CE", "FL0.5", "FLstar"])
def test_per_class_alpha_equals_float64_definition(backend, loss):
    x, labels = _data()
    ref_value, ref_grad = _float64(loss, x, labels, ALPHA)
    xx = x.clone().requires_grad_()
    with use_backend(backend):
        value = loss(xx, labels)
        value.backward()
    torch.testing.assert_close(value.double(), ref_value, rtol=2e-6, atol=0)
    torch.testing.assert_close(xx.grad.double(), ref_grad, rtol=1e-5, atol=1e-7)
    # the float-target path (elementwise) agrees with the label path
    t = F.one_hot(labels.clamp_min(0), 6)[:, :5].float()
    with use_backend(backend):
        per = loss.loss(x, t, reduction="none")
    torch.testing.assert_close(per[labels >= 0].sum().double(), ref_value, rtol=2e-6, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_same_alpha_for_every_class_is_the_scalar_alpha(backend):
    x, labels = _data(seed=1)
    with use_backend(backend):
        a = FocalLoss(gamma=2.0, alpha=[0.25] * 5)(x, labels)
        b = FocalLoss(gamma=2.0, alpha=0.25)(x, labels)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


def test_wrong_length_names_k():
    x, labels = _data(k=5)
    with pytest.raises(ValueError, match="3 per-class values.*K = 5"):
        FocalLoss(alpha=[0.1, 0.2, 0.3])(x, labels)
    cfg = get_tiny_cfg(num_classes=3)
    cfg.MODEL.FOCAL_DET.CLS_LOSS.ALPHA_PER_CLASS = [0.25, 0.5]
    with pytest.raises(ValueError, match=r"ALPHA_PER_CLASS has 2 values.*K = 3"):
        build_model(cfg)
    with pytest.raises(ValueError, match=r"ALPHA_PER_CLASS=.*\[0, 1\].*1.5"):
        FocalLoss(alpha=[0.2, 1.5])


def test_config_key_reaches_the_loss_and_the_model_trains():
    cfg = get_tiny_cfg(num_classes=3)
    cfg.MODEL.FOCAL_DET.CLS_LOSS.ALPHA_PER_CLASS = [0.25, 0.5, 0.75]
    loss = build_cls_loss(cfg)
    assert loss.class_alpha.tolist() == [0.25, 0.5, 0.75]
    assert "alpha=[0.25, 0.5, 0.75]" in repr(loss)
    model = build_model(cfg)
    assert model.cls_loss.class_alpha.tolist() == [0.25, 0.5, 0.75]
