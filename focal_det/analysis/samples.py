"""The binary samples a trained (or freshly initialized) RetinaNet classifies: its logits on a
dataset's images, split into positive and negative (anchor, class) samples exactly as the loss
sees them (Detectron2's matcher; ignored anchors left out)."""
import torch


def collect_logits(cfg, model, dataset_name: str, num_images: int,
                   max_negatives_per_image: int, seed: int = 0, batch_norm_stats: bool = False):
    """Logits of positive samples (all) and negative samples (a uniform random subset of at most
    ``max_negatives_per_image`` per image), over the first ``num_images`` images.

    ``batch_norm_stats``: normalize with the statistics of batches of SOLVER.IMS_PER_BATCH
    images, as a training step does (``model.train()``), instead of the running averages. For a
    freshly initialized model, whose running averages are still the defaults, that is what its
    first training step computes."""
    import detectron2.data.transforms as T
    from detectron2.data import DatasetMapper, get_detection_dataset_dicts

    dicts = get_detection_dataset_dicts([dataset_name], filter_empty=False)[:num_images]
    if not dicts:
        raise ValueError(f"dataset {dataset_name!r} has no images")
    # Test-time resize, annotations kept (is_train=True keeps them; no random augmentation).
    mapper = DatasetMapper(cfg, is_train=True, augmentations=[
        T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)])
    batch_size = cfg.SOLVER.IMS_PER_BATCH if batch_norm_stats else 1
    loader = ([mapper(d) for d in dicts[i:i + batch_size]]
              for i in range(0, len(dicts), batch_size))
    g = torch.Generator().manual_seed(seed)
    pos, neg = [], []
    num_fg = num_bg = 0
    model.train(batch_norm_stats)
    with torch.no_grad():
        for batch in loader:
            anchors, logits, _ = model.dense_outputs(model.preprocess_image(batch))
            gt = [b["instances"].to(model.device) for b in batch]
            labels, _ = model.label_anchors(anchors, gt)
            logits = torch.cat(logits, dim=1)  # (N, R, K)
            for x, y in zip(logits, labels):
                valid = y >= 0
                x, y = x[valid], y[valid]
                fg = y < model.num_classes
                num_fg += int(fg.sum())
                num_bg += int((~fg).sum())
                targets = torch.zeros_like(x, dtype=torch.bool)
                targets[fg.nonzero().squeeze(1), y[fg]] = True
                pos.append(x[targets].float().cpu())
                negatives = x[~targets].float().cpu()
                if len(negatives) > max_negatives_per_image:
                    keep = torch.randperm(len(negatives), generator=g)[:max_negatives_per_image]
                    negatives = negatives[keep]
                neg.append(negatives)
    return torch.cat(pos), torch.cat(neg), {"images": len(dicts), "foreground_anchors": num_fg,
                                            "background_anchors": num_bg}
