"""Decoding source videos (PyAV) and frame folders (PIL) into uint8 arrays ``# t h w c``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class VideoDecodeError(RuntimeError):
    pass


def natural_key(name: str) -> list[int | str]:
    """Sort key where digit runs compare as numbers: frame9 < frame10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def natsorted(names: list[str]) -> list[str]:
    return sorted(names, key=natural_key)


def iter_video(path: str | Path) -> Iterator[np.ndarray]:
    """Frames of a video file one by one, uint8 ``# h w c`` (RGB). Raises VideoDecodeError for a
    missing, empty, undecodable or damaged file (a truncated file decodes without an exception,
    but the demuxer reports the torn packet: that is damage too, not a shorter video); the damage
    of the last packets is only known at the end, so a caller keeps nothing until the iterator ends."""
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"{path}: empty file (0 bytes)")
    count = 0
    av.logging.set_level(av.logging.ERROR)
    av.logging.set_skip_repeated(False)  # the same damage in the next file must be seen too
    try:
        # all threads: the decoder's threads report the damage
        with av.logging.Capture(False) as ffmpeg_log, av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                count += 1
                yield frame.to_ndarray(format="rgb24")
    except VideoDecodeError:
        raise
    except GeneratorExit:
        return
    except Exception as e:  # PyAV raises many error types for damaged files
        raise VideoDecodeError(f"{path}: cannot decode ({type(e).__name__}: {e})"
                               + (f" after {count} frames" if count else "")) from e
    errors = [message.strip() for level, _, message in ffmpeg_log if level <= av.logging.ERROR]
    if errors:
        raise VideoDecodeError(f"{path}: damaged (truncated or corrupt) after {count} frames: {errors[0]}")
    if not count:
        raise VideoDecodeError(f"{path}: no decodable frames")


def decode_video(path: str | Path, max_frames: int | None = None) -> np.ndarray:
    """All frames of a video file as uint8 ``# t h w c`` (RGB); errors as ``iter_video``."""
    frames = []
    for frame in iter_video(path):
        frames.append(frame)
        if max_frames is not None and len(frames) >= max_frames:
            break
    return np.stack(frames)


def video_fps(path: str | Path) -> float | None:
    """Frame rate the container declares for the first video stream (None if it declares none)."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    except Exception:  # an unreadable file is reported by the decoder, not here
        return None
    return float(rate) if rate else None


def list_frame_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    names = [p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return [folder / n for n in natsorted(names)]


def iter_frames(files: list[Path]) -> Iterator[np.ndarray]:
    """Frame image files one by one as uint8 ``# h w c``; all must share the first one's size."""
    shape = None
    for f in files:
        try:
            with Image.open(f) as im:
                frame = np.asarray(im.convert("RGB"))
        except Exception as e:
            raise VideoDecodeError(f"{f}: cannot read image ({type(e).__name__}: {e})") from e
        if shape is not None and frame.shape != shape:
            raise VideoDecodeError(f"{f.parent}: frames have different sizes ({f.name} is {frame.shape}, "
                                   f"the first frame {shape})")
        shape = frame.shape
        yield frame
    if shape is None:
        raise VideoDecodeError("no frames")


def read_frames(files: list[Path]) -> np.ndarray:
    """Frame image files (any size) -> uint8 ``# t h w c``; all frames must share one size."""
    return np.stack(list(iter_frames(files)))
