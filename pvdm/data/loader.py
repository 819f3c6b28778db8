"""Training batches from a clip store, deterministic in (seed, step, rank).

The batch of step k is a pure function of the seed and k (epoch-wise permutations of the store,
then a random temporal window inside each stored clip), so a resumed run reads exactly the batches
an uninterrupted run would have read, for any number of ranks.
"""

from __future__ import annotations

import numpy as np
import torch

from pvdm.data.store import ClipStore


def batch_indices(num_items: int, global_batch: int, seed: int, step: int) -> np.ndarray:
    """Store indices of the global batch of ``step``: epoch-wise seeded permutations."""
    positions = step * global_batch + np.arange(global_batch)
    epochs, offsets = np.divmod(positions, num_items)
    out = np.empty(global_batch, dtype=np.int64)
    for epoch in np.unique(epochs):
        perm = np.random.default_rng([seed, int(epoch)]).permutation(num_items)
        mask = epochs == epoch
        out[mask] = perm[offsets[mask]]
    return out


class ClipBatches:
    """``get(step)`` -> uint8 tensor ``# b t h w c``: this rank's share of the global batch.

    Batches stay uint8 until they reach the training device (4x less host-to-device traffic);
    convert there with ``to_model_range``.
    """

    def __init__(
        self, store: ClipStore, batch_size: int, frames: int, seed: int, rank: int = 0, world_size: int = 1
    ):
        if frames > store.frames:
            raise ValueError(f"{store.path}: clips have {store.frames} frames, {frames} requested")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by world size {world_size}")
        self.store, self.batch_size, self.frames, self.seed = store, batch_size, frames, seed
        self.rank, self.world_size = rank, world_size

    @property
    def local_slice(self) -> slice:
        """This rank's rows of the global batch."""
        local = self.batch_size // self.world_size
        return slice(self.rank * local, (self.rank + 1) * local)

    def indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        idx = batch_indices(len(self.store), self.batch_size, self.seed, step)
        offsets = np.random.default_rng([self.seed, step, 1]).integers(
            0, self.store.frames - self.frames + 1, size=self.batch_size
        )
        return idx[self.local_slice], offsets[self.local_slice]

    def get(self, step: int) -> torch.Tensor:
        idx, offsets = self.indices(step)
        out = np.empty((len(idx), self.frames, *self.store.shape[2:]), dtype=np.uint8)
        for i in np.argsort(idx, kind="stable"):  # sorted reads: sequential access in the file
            out[i] = self.store.clips[idx[i], offsets[i] : offsets[i] + self.frames]
        return torch.from_numpy(out)


def to_model_range(clips: torch.Tensor) -> torch.Tensor:
    """uint8 ``# b t h w c`` -> float ``# b c t h w`` in [-1, 1] (x / 127.5 - 1, as the original)."""
    return clips.permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0)


def quantize_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 of the same shape and device: round half up of (x+1)*127.5, in float32.

    The one quantisation of generated frames (StyleGAN-V's rounding); values outside [-1, 1] saturate.
    """
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5 + 0.5).floor().clamp(0, 255).to(torch.uint8)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float ``# b c t h w`` in [-1, 1] -> uint8 ``# b t h w c`` (``quantize_uint8``), as a numpy array."""
    return quantize_uint8(x).permute(0, 2, 3, 4, 1).cpu().numpy()
