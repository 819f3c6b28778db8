"""Seeds derived from the experiment seed: one formula for every random stream of the pipeline.

A stream is identified by an integer offset: training step ``k`` uses offsets ``7 k + stream``
(stream 0: the autoencoder step, 1: the diffusion batch, 2: the diffusion noise), sample ``i`` of
the sampling stage uses offset ``i``. Streams never depend on the batch size or the rank count.
"""

from __future__ import annotations

import torch

SEED_STRIDE = 1_000_003  # prime; seeds of different experiments stay apart for offsets below it
SAMPLE_SEED_FORMULA = f"seed * {SEED_STRIDE} + index"  # what sample_seed computes, for cards and help texts


def derived_seed(seed: int, offset: int) -> int:
    return seed * SEED_STRIDE + offset


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """The CPU generator of training step ``step``, stream ``stream`` (same on every rank)."""
    return torch.Generator().manual_seed(derived_seed(seed, step * 7 + stream))


def sample_seed(seed: int, index: int) -> int:
    """Seed of sample ``index`` of a sampling run: the sample does not depend on its batch or shard."""
    return derived_seed(seed, index)
