"""A training data stream that resumes exactly: the sample at global position p (and its
augmentation) depends only on (seed, p), not on when or in which process it is produced.

Detectron2's TrainingSampler restarts its shuffled stream from the beginning on --resume, and
augmentations draw from per-worker RNGs seeded at loader creation, so a resumed run sees
different data than an uninterrupted one. Here:

- ``PositionalSampler(start)`` yields global positions start + rank, start + rank + world, ...
- ``PositionalDataset`` maps position p to the dataset dict at index perm_e[p mod n], where
  perm_e is the permutation of epoch e = p // n, seeded by (seed, e);
- ``SeededMapper`` seeds ``numpy.random`` and ``random`` from (seed, p) before mapping.

Resuming at iteration N therefore starts at position N * SOLVER.IMS_PER_BATCH. Exactness also
needs a fixed ``SEED`` and one aspect-ratio group (Detectron2's AspectRatioGroupedDataset keeps
half-filled batches in memory, which a kill loses).

Repeat-factor sampling (LVIS's, Detectron2's ``RepeatFactorTrainingSampler``):
``RepeatFactorPositionalDataset`` is the same stream over Detectron2's epochs with repeats. The
repeat factors are Detectron2's own (``repeat_factors``); epoch e repeats image i
floor(r_i) times plus once more with probability frac(r_i) (Detectron2's stochastic rounding)
and shuffles the result. One stated departure: Detectron2 draws every epoch's rounding and
order from one generator stream, here epoch e's come from a generator seeded by (seed, e), so
the sample at position p is still a function of (seed, p) and a resumed run continues exactly.
"""
import bisect
import inspect
import random

import numpy as np
import torch
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.utils import comm
from torch.utils.data import Dataset, Sampler

_POSITION_KEY = "_focal_det_position"


class PositionalSampler(Sampler):
    def __init__(self, start: int = 0):
        self.start = int(start)
        self.rank, self.world = comm.get_rank(), comm.get_world_size()

    def __iter__(self):
        position = self.start + self.rank
        while True:
            yield position
            position += self.world


class PositionalDataset(Dataset):
    def __init__(self, dicts, seed: int):
        self.dicts, self.seed = dicts, int(seed)
        self._epoch, self._perm = None, None

    def __len__(self):
        return len(self.dicts)

    def __getitem__(self, position: int):
        epoch, i = divmod(int(position), len(self.dicts))
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(len(self.dicts), generator=g)
        return dict(self.dicts[int(self._perm[i])], **{_POSITION_KEY: int(position)})


class SeededMapper:
    def __init__(self, mapper, seed: int):
        self.mapper, self.seed = mapper, int(seed)

    def __call__(self, dataset_dict):
        dataset_dict = dict(dataset_dict)
        position = dataset_dict.pop(_POSITION_KEY)
        sample_seed = (self.seed * 1_000_003 + position) % (2**32)
        np.random.seed(sample_seed)
        random.seed(sample_seed)
        return self.mapper(dataset_dict)


def repeat_factors(dicts, threshold: float, sqrt: bool = True) -> torch.Tensor:
    """Each image's repeat factor, Detectron2's ``repeat_factors_from_category_frequency``:
    r(c) = max(1, sqrt(threshold / f(c))) for a class in a fraction f(c) of the images, an
    image's the largest of its classes'. ``sqrt=False`` (Detectron2 after v0.6:
    DATALOADER.REPEAT_SQRT) drops the square root where Detectron2 has that option."""
    compute = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency
    if "sqrt" in inspect.signature(compute).parameters:
        return compute(dicts, threshold, sqrt=sqrt)
    if not sqrt:
        raise ValueError("DATALOADER.REPEAT_SQRT=False: this Detectron2's "
                         "RepeatFactorTrainingSampler has no sqrt option (always the square root)")
    return compute(dicts, threshold)


class RepeatFactorPositionalDataset(PositionalDataset):
    """``PositionalDataset`` over repeat-factor epochs (module docstring)."""

    def __init__(self, dicts, seed: int, factors):
        super().__init__(dicts, seed)
        factors = torch.as_tensor(factors, dtype=torch.float32)
        if factors.shape != (len(dicts),) or not bool((factors >= 1).all()):
            raise ValueError(f"repeat factors must be {len(dicts)} values >= 1 (one per image), "
                             f"got shape {tuple(factors.shape)}")
        self._int_part = torch.trunc(factors)
        self._frac_part = factors - self._int_part
        self._starts = [0]  # position at which epoch e starts, extended as positions ask

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """The dataset indices of repeat-factor epoch ``epoch``, in their shuffled order."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        rands = torch.rand(len(self._frac_part), generator=g)
        reps = (self._int_part + (rands < self._frac_part).float()).long()
        indices = torch.repeat_interleave(torch.arange(len(reps)), reps)
        return indices[torch.randperm(len(indices), generator=g)]

    def __getitem__(self, position: int):
        position = int(position)
        while self._starts[-1] <= position:  # lengths of the epochs up to this position
            self._starts.append(self._starts[-1] + len(self.epoch_indices(len(self._starts) - 1)))
        epoch = bisect.bisect_right(self._starts, position) - 1
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, self.epoch_indices(epoch)
        index = int(self._perm[position - self._starts[epoch]])
        return dict(self.dicts[index], **{_POSITION_KEY: position})
