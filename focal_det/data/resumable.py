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
"""
import random

import numpy as np
import torch
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
