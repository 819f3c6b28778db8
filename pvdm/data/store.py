"""Clip store: fixed-length uint8 clips in one memory-mapped file.

Layout of a store folder::

    clips.u8     raw uint8, C-order, shape [N, T, H, W, 3]   (# n t h w c)
    index.npy    int64 [N, 2]: (video id, first frame) of each clip
    videos.json  the source of each video id (relative path), in store order
    store.json   shape, dtype, preprocessing parameters, sha256 of clips.u8

``ClipStore.fingerprint`` is a hash of the whole content (store.json holds the clips' sha256, which
the writer computes as it writes): what a training run's resume key and the latent cache record,
so a store rebuilt with other clips is never taken for the old one.

Reading a batch is one fancy index into the memory map (no decoding), which is what makes training
input cheap; see benchmarks/bench_clip_store.py. Writers append clip by clip and publish the folder
with a rename at the end, so a killed job never leaves a store that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pvdm.utils.io import atomic_write_json, raise_if_disk_full, sha256_file

log = logging.getLogger("pvdm.data")

STORE_FORMAT = 1


class ClipStoreWriter:
    """Append clips ``# t h w c`` uint8 of one fixed shape; ``close()`` publishes the store."""

    def __init__(
        self, path: str | os.PathLike, frames: int, resolution: int, meta: dict[str, Any] | None = None
    ):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.partial")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self.clip_shape = (frames, resolution, resolution, 3)
        self.meta = meta or {}
        self._file = open(self.tmp / "clips.u8", "wb")
        self._sha = hashlib.sha256()
        self._index: list[tuple[int, int]] = []
        self._videos: list[str] = []

    def add_video(self, source: str) -> int:
        self._videos.append(source)
        return len(self._videos) - 1

    def add_clip(self, clip: np.ndarray, video_id: int, start: int) -> None:
        if clip.shape != self.clip_shape or clip.dtype != np.uint8:
            raise ValueError(
                f"clip has shape {clip.shape} {clip.dtype}, store expects {self.clip_shape} uint8"
            )
        try:
            data = np.ascontiguousarray(clip).tobytes()
            self._file.write(data)
        except OSError as e:
            raise_if_disk_full(e, self.path, self._file.tell())
            raise
        self._sha.update(data)
        self._index.append((video_id, start))

    def __len__(self) -> int:
        return len(self._index)

    @property
    def num_videos(self) -> int:
        return len(self._videos)

    def close(self) -> Path:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            index = np.asarray(self._index, dtype=np.int64).reshape(-1, 2)
            np.save(self.tmp / "index.npy", index)
        except OSError as e:
            raise_if_disk_full(e, self.path, self._file.tell() if not self._file.closed else None)
            raise
        atomic_write_json(self.tmp / "videos.json", self._videos)
        info = {
            "format": STORE_FORMAT,
            "shape": [len(index), *self.clip_shape],
            "dtype": "uint8",
            "layout": "n t h w c",
            "num_videos": len(self._videos),
            "clips_sha256": self._sha.hexdigest(),
            **self.meta,
        }
        atomic_write_json(self.tmp / "store.json", info)
        # The old store stays whole until the new one is in place: a kill between the two renames
        # leaves it as .<name>.old (removed by the next writer), never a half-deleted store.
        old = self.path.with_name(f".{self.path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if self.path.exists():
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        shutil.rmtree(old, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        self._file.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class ClipStore:
    """Read-only view of a clip store folder. ``store[i]`` -> uint8 ``# t h w c``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        info_path = self.path / "store.json"
        if not info_path.is_file():
            raise FileNotFoundError(
                f"{self.path} is not a clip store (no store.json); run `pvdm prepare` to build it"
            )
        with open(info_path) as f:
            self.info = json.load(f)
        if self.info.get("format") != STORE_FORMAT:
            raise ValueError(f"{info_path}: store format {self.info.get('format')}, expected {STORE_FORMAT}")
        self.shape = tuple(self.info["shape"])
        expected = int(np.prod(self.shape))
        size = (self.path / "clips.u8").stat().st_size
        if size != expected:
            raise ValueError(
                f"{self.path / 'clips.u8'}: {size} bytes, expected {expected} for shape {self.shape}"
            )
        self.clips = np.memmap(self.path / "clips.u8", dtype=np.uint8, mode="r", shape=self.shape)
        self.index = np.load(self.path / "index.npy")
        with open(self.path / "videos.json") as f:
            self.videos: list[str] = json.load(f)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def frames(self) -> int:
        return self.shape[1]

    @property
    def resolution(self) -> int:
        return self.shape[2]

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.clips[i])

    def batch(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """uint8 ``# b t h w c`` for the given clip indices (sorted reads are fastest)."""
        indices = np.asarray(indices)
        order = np.argsort(indices, kind="stable")
        out = np.empty((len(indices), *self.shape[1:]), dtype=np.uint8)
        out[order] = self.clips[indices[order]]
        return out

    def fingerprint(self) -> str:
        """sha256 of the store's content: store.json (with the clips' sha256), index and video list.
        A store written before the writer recorded ``clips_sha256`` has its clips hashed here."""
        h = hashlib.sha256()
        info = dict(self.info)
        if "clips_sha256" not in info:
            log.info("%s: hashing clips.u8 (the store predates recorded hashes)", self.path)
            info["clips_sha256"] = sha256_file(self.path / "clips.u8")
        h.update(json.dumps(info, sort_keys=True).encode())
        h.update(np.ascontiguousarray(self.index, dtype=np.int64).tobytes())
        h.update(json.dumps(self.videos).encode())
        return h.hexdigest()
