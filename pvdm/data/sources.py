"""A dataset is a sorted list of video sources: a video file or a folder of frame images."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pvdm.data.video_io import decode_video, list_frame_files, read_frames
from pvdm.utils.io import sha256_file


class LayoutError(ValueError):
    """The dataset folder does not have the expected layout; the message shows the expected tree."""


@dataclass(frozen=True)
class VideoFile:
    path: Path
    name: str  # path relative to the dataset root: the id used for sorting and in the manifest

    def files(self) -> list[Path]:
        return [self.path]

    def load(self) -> np.ndarray:  # t h w c uint8
        return decode_video(self.path)


@dataclass(frozen=True)
class FrameFolder:
    path: Path
    name: str

    def files(self) -> list[Path]:
        return list_frame_files(self.path)

    def load(self) -> np.ndarray:  # t h w c uint8
        return read_frames(self.files())


VideoSource = VideoFile | FrameFolder


def content_hash(source: VideoSource) -> str:
    """sha256 of a video file, or of a frame folder's (name, sha256) list: identical content, equal hash."""
    files = source.files()
    if len(files) == 1:
        return sha256_file(files[0])
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{sha256_file(f)}\n".encode())
    return h.hexdigest()
