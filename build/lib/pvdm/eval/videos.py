"""Video sets for evaluation: clip stores (one clip per source video) and ``.npy`` files of uint8 videos."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from pvdm.data.store import ClipStore
from pvdm.utils.io import sha256_file


class OneClipPerVideo:
    """A clip store seen as ``[videos, T, H, W, 3]``: one stored clip per source video (a seeded
    choice when the store keeps several), read lazily from the memory map."""

    def __init__(self, store: ClipStore, seed: int = 0):
        self.store = store
        rng = np.random.default_rng([seed, 7])
        # Clips grouped by video (ascending video id, clips in store order), one seeded pick each.
        order = np.argsort(store.index[:, 0], kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(store.index[order, 0])) + 1)
        self.rows = np.array([rng.choice(g) for g in groups], dtype=np.int64)
        self.dtype, self.ndim = np.dtype(np.uint8), 5
        self.shape = (len(self.rows), *store.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, slice]) -> np.ndarray:
        i, frames = key
        return np.asarray(self.store.clips[self.rows[i], frames])


def store_fingerprint(store: ClipStore) -> str:
    """Identifies a store's content for feature caching without hashing gigabytes of pixels:
    its metadata, index and source list, plus the first and last MiB of the pixels."""
    h = hashlib.sha256()
    for name in ("store.json", "index.npy", "videos.json"):
        h.update((store.path / name).read_bytes())
    with open(store.path / "clips.u8", "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, store.clips.size - (1 << 20)))
        h.update(f.read())
    return h.hexdigest()


def load_videos(path: Path, seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """A ``.npy`` file of uint8 videos or a clip store folder (one clip per video)."""
    if path.is_dir():
        store = ClipStore(path)
        return OneClipPerVideo(store, seed), {
            "path": str(path),
            "store_fingerprint": store_fingerprint(store),
        }
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or clip store")
    videos = np.load(path, mmap_mode="r", allow_pickle=False)
    if videos.dtype != np.uint8 or videos.ndim != 5:
        raise ValueError(f"{path}: expected uint8 videos [N, L, H, W, 3], got {videos.dtype} {videos.shape}")
    return videos, {"path": str(path), "sha256": sha256_file(path)}
