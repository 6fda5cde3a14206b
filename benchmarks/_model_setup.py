"""Model set-up shared by the model benchmarks: the same R50-FPN weights in FocalRetinaNet and
Detectron2's RetinaNet, calibrated score scenarios, synthetic batches, one step, one detection,
the parity checks of losses and detections, and torchvision's RetinaNet as a reference."""
import copy
import os

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_pair(device, config="configs/retinanet_R50_FPN_1x.yaml", **focal_det_keys):
    """FocalRetinaNet (with ``MODEL.FOCAL_DET.<key>=value`` where this version has the key)
    and Detectron2's RetinaNet, same weights (R50-FPN unless ``config`` says otherwise)."""
    from detectron2.modeling import build_model

    from focal_det import cli

    cfg = cli.load_yaml_config(os.path.join(REPO, config),
                               ["MODEL.WEIGHTS", ""], device=device, freeze=False)
    for key, value in focal_det_keys.items():
        if key in cfg.MODEL.FOCAL_DET:
            cfg.MODEL.FOCAL_DET[key] = value
    torch.manual_seed(0)
    ours = build_model(cfg)
    d2_cfg = cfg.clone()
    d2_cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    theirs = build_model(d2_cfg)
    with torch.no_grad():
        theirs.head.bbox_pred.weight.normal_(0, 1e-9)  # boxes near their anchors, not off-image
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


# Logit distributions of the class conv at inference: "dense" puts ~every score above
# SCORE_THRESH_TEST (0.05), as untrained or badly calibrated models do, the worst case for
# post-processing; "sparse" puts ~1% of them above it, closer to a trained detector.
SCORE_SCENARIOS = {"dense": (0.5, 0.5), "sparse": (1.5, -6.43)}  # (logit std, logit mean)


def set_scores(models, image, scenario):
    """Scale the shared class conv so that logits on ``image`` are ~N(mean, std)."""
    std, mean = SCORE_SCENARIOS[scenario]
    ref = models[0]
    with torch.no_grad():
        ref.eval()
        feats = ref.backbone(ref.preprocess_image([{"image": image}]).tensor)
        head = ref.head
        head.cls_score.weight.normal_(0, 1.0)
        head.cls_score.bias.zero_()
        logits = torch.cat([x.flatten() for x in head([feats[f] for f in ref.head_in_features])[0]])
        head.cls_score.weight.mul_(std / logits.std())
        head.cls_score.bias.fill_(mean)
        for m in models[1:]:
            m.head.cls_score.load_state_dict(head.cls_score.state_dict())


def make_batch(n, h, w, device, seed=0):
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(n):
        inst = Instances((h, w))
        xy = torch.rand(10, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = torch.rand(10, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3]) + 16
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], 1))
        inst.gt_classes = torch.randint(0, 80, (10,), generator=g)
        batch.append({"image": (torch.rand(3, h, w, generator=g) * 255).to(device),
                      "instances": inst.to(device)})
    return batch


def train_step(model, optimizer, batch, forward_dtype=None):
    """One step; ``forward_dtype`` (e.g. torch.bfloat16): the forward under the device's
    autocast, the backward and the SGD step outside it, as focal_det.engine.amp runs them."""
    import contextlib

    from detectron2.utils.events import EventStorage

    model.train()
    autocast = (torch.autocast(batch[0]["image"].device.type, dtype=forward_dtype)
                if forward_dtype is not None else contextlib.nullcontext())
    with EventStorage(), autocast:
        losses = model(batch)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    return {k: v.item() for k, v in losses.items()}


def detect(model, batch):
    model.eval()
    with torch.no_grad():
        return model(batch)[0]["instances"]


def same_detections(a, b):
    """Same detections: equal count, and each detection of ``a`` pairs with its own detection
    of ``b`` of the same class, box within 1e-3 px + 2e-4 relative, score within 1e-5 (as a
    set: two detections with scores equal to the last float bit may come in either order)."""
    if len(a) != len(b):
        return False
    used = torch.zeros(len(b), dtype=torch.bool)
    for i in range(len(a)):
        box_diff = (b.pred_boxes.tensor - a.pred_boxes.tensor[i]).abs()
        box_tol = 1e-3 + 2e-4 * a.pred_boxes.tensor[i].abs()
        match = ((b.pred_classes == a.pred_classes[i]) & ~used
                 & ((b.scores - a.scores[i]).abs() <= 1e-5) & (box_diff <= box_tol).all(dim=1))
        j = match.nonzero()
        if len(j) == 0:
            return False
        used[j[0, 0]] = True
    return True


def check_losses(ours, theirs, train_batch):
    ours_c, theirs_c = copy.deepcopy(ours), copy.deepcopy(theirs)
    l1 = train_step(ours_c, torch.optim.SGD(ours_c.parameters(), lr=0.0), train_batch)
    l2 = train_step(theirs_c, torch.optim.SGD(theirs_c.parameters(), lr=0.0), train_batch)
    ok = all(abs(l1[k] - l2[k]) <= 1e-5 * max(abs(l2[k]), 1e-12) for k in l2)
    return {"losses_ours": l1, "losses_detectron2": l2, "losses_match": ok}


def torchvision_retinanet(device, n, h, w):
    """torchvision's retinanet_resnet50_fpn (random init, 80 classes, no resize at this size,
    100 detections per image): a reference users know, not the same weights."""
    from torchvision.models.detection import retinanet_resnet50_fpn

    torch.manual_seed(0)
    model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=80,
                                   min_size=min(h, w), max_size=max(h, w),
                                   detections_per_img=100).to(device)
    batch = make_batch(n, h, w, device)
    images = [b["image"] / 255.0 for b in batch]
    targets = [{"boxes": b["instances"].gt_boxes.tensor, "labels": b["instances"].gt_classes}
               for b in batch]
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)

    def step():
        model.train()
        losses = model(images, targets)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()

    def infer():
        model.eval()
        with torch.no_grad():
            model(images[:1])

    return step, infer
