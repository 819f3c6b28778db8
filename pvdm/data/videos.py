"""`dataset: videos`: your own footage, from a folder or a CSV list, into the usual clip stores.

* Listing: a folder is searched recursively for video files (VIDEO_EXTENSIONS) and folders of
  png/jpg frames (natural order); a CSV has a ``path`` column (relative to the CSV) and optional
  ``split`` (train / test) and ``group`` columns. Hidden files and folders are ignored.
* Identical files (same content hash) count once; the later ones (in name order) are duplicates.
* Split, without leakage: the CSV's ``split`` column, else ``train/`` and ``test/`` subfolders, else
  a seeded ``data.test_fraction`` of the source groups (default group: the file; ``data.group_pattern``
  is a regex whose first group names the source). A group on both sides is an error.
* Decoding streams frame by frame (PyAV, or PIL for frame folders): each frame is resampled in time
  (``data.fps``), scored for shot cuts (pvdm.data.shots) and fitted to ``data.resolution`` (centre
  crop or padding) as it arrives, so a long video never sits in memory at full size.
* Clips lie within one shot. Every listed file is in the manifest with its split, group, frames,
  frame rate, shots and clips, or why it was skipped or dropped as a duplicate.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pvdm.data.shots import content_score, shots_from_scores, small_hsv
from pvdm.data.sources import FrameFolder, VideoFile, VideoSource, content_hash
from pvdm.data.transforms import FITS
from pvdm.data.video_io import (
    IMAGE_EXTENSIONS,
    VideoDecodeError,
    iter_frames,
    iter_video,
    natural_key,
    video_fps,
)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")
SPLIT_NAMES = {"train": "train", "test": "test", "val": "test"}
CHUNK = 32  # frames fitted per resize call


class VideosError(ValueError):
    """The videos folder or CSV cannot be used; the message names it and what was found."""


@dataclass(frozen=True)
class VideoOptions:
    """The `videos` settings a worker process needs (besides ClipParams)."""

    fps: float | None = None
    shots: bool = True
    shot_threshold: float = 27.0
    min_shot_frames: int = 15
    crop: str = "center"


@dataclass
class VideoEntry:
    """One listed input and what became of it (the manifest's row)."""

    source: VideoSource
    split: str | None = None  # fixed by the CSV or by train/ test/ folders; None = drawn
    group: str | None = None  # from the CSV; else from data.group_pattern or the name
    sha256: str | None = None
    status: str = "listed"  # -> used | skipped | duplicate
    reason: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.source.name


def video_options(data_cfg: dict[str, Any]) -> VideoOptions:
    return VideoOptions(
        fps=data_cfg["fps"],
        shots=data_cfg["shots"],
        shot_threshold=data_cfg["shot_threshold"],
        min_shot_frames=data_cfg["min_shot_frames"],
        crop=data_cfg["crop"],
    )


# ---------------------------------------------------------------------------------------------------
# Listing


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def list_folder(root: Path) -> tuple[list[VideoEntry], Counter]:
    """Video files and frame folders under ``root`` in natural order, and a count of every kind of
    file seen (for the error message when nothing usable is there)."""
    entries, found = [], Counter()
    for path in sorted(root.rglob("*"), key=lambda p: natural_key(str(p.relative_to(root)))):
        if not _visible(path, root):
            continue
        rel = str(path.relative_to(root))
        if path.is_dir():
            if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir() if p.is_file()):
                entries.append(VideoEntry(FrameFolder(path, rel)))
                found["frame folders"] += 1
            continue
        ext = path.suffix.lower()
        if ext in VIDEO_EXTENSIONS:
            entries.append(VideoEntry(VideoFile(path, rel)))
        if ext not in IMAGE_EXTENSIONS:
            found[ext or "(no extension)"] += 1
    if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in root.iterdir() if p.is_file()):
        entries.insert(0, VideoEntry(FrameFolder(root, root.name)))
        found["frame folders"] += 1
    _folder_splits(root, entries)
    return entries, found


def _folder_splits(root: Path, entries: list[VideoEntry]) -> None:
    """With train/ and test/ (or val/) subfolders, the folder decides each file's split."""
    has = {name for name in SPLIT_NAMES if (root / name).is_dir()}
    if "train" not in has or not has & {"test", "val"}:
        return
    for e in entries:
        top = Path(e.name).parts[0] if e.source.path != root else ""
        if top in SPLIT_NAMES and len(Path(e.name).parts) > 1:
            e.split = SPLIT_NAMES[top]
        else:
            e.status, e.reason = "skipped", f"outside {root}/train and {root}/test (the folder is split by them)"


def list_csv(csv_path: Path) -> tuple[list[VideoEntry], Counter]:
    """Rows of a CSV with a ``path`` column (relative to the CSV) and optional ``split``, ``group``."""
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "path" not in columns:
            raise VideosError(f"{csv_path}: no 'path' column (columns: {columns}); expected path[,split][,group]")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    entries, found = [], Counter()
    for line, row in enumerate(rows, start=2):
        if not row["path"]:
            raise VideosError(f"{csv_path}, line {line}: empty path")
        path = csv_path.parent / row["path"]
        source = FrameFolder(path, row["path"]) if path.is_dir() else VideoFile(path, row["path"])
        split = row.get("split") or None
        if split is not None and split.lower() not in SPLIT_NAMES:
            raise VideosError(f"{csv_path}, line {line}: split {split!r}; use train or test (or leave it empty)")
        entries.append(VideoEntry(source, SPLIT_NAMES[split.lower()] if split else None, row.get("group") or None))
        found[path.suffix.lower() if not path.is_dir() else "frame folders"] += 1
    return entries, found


def list_inputs(root: Path) -> list[VideoEntry]:
    """Every input of a folder or CSV; an error naming the folder and what it holds if nothing is a video."""
    if not root.exists():
        raise VideosError(f"data.root = {root}: no such folder or CSV file")
    entries, found = list_csv(root) if root.is_file() else list_folder(root)
    if not entries:
        seen = ", ".join(f"{n} {kind}" for kind, n in found.most_common()) or "nothing"
        raise VideosError(
            f"{root}: no videos found (searched {'the CSV' if root.is_file() else 'recursively'} for "
            f"{', '.join(VIDEO_EXTENSIONS)} files and folders of png/jpg frames); found: {seen}"
        )
    return entries


def input_paths(root: Path) -> list[str]:
    """What the data stage reads from ``root``: the Snakemake inputs of prepare_data (video files, frame
    folders, the CSV). A missing root is returned as is (Snakemake reports it missing); a malformed
    CSV is left for `pvdm prepare` to report."""
    if not root.exists():
        return [str(root)]
    try:
        entries, _ = list_csv(root) if root.is_file() else list_folder(root)
    except VideosError:
        entries = []
    listed = [str(e.source.path) for e in entries if e.source.path.exists()]
    return ([str(root)] if root.is_file() else []) + listed


# ---------------------------------------------------------------------------------------------------
# Duplicates, groups and the split


def mark_duplicates(entries: list[VideoEntry]) -> None:
    """Hash every listed input; identical content after the first (in name order) is a duplicate."""
    first: dict[str, str] = {}
    for e in entries:
        if e.status != "listed":
            continue
        try:
            e.sha256 = content_hash(e.source)
        except OSError as err:
            e.status, e.reason = "skipped", f"cannot read: {err}"
            continue
        if e.sha256 in first:
            e.status, e.reason = "duplicate", f"same content as {first[e.sha256]}"
        else:
            first[e.sha256] = e.name


def assign_groups(entries: list[VideoEntry], pattern: str | None) -> None:
    """Group of each input: the CSV's, else the first group of ``pattern`` in its path, else its path."""
    regex = None
    if pattern:
        try:
            regex = re.compile(pattern)
        except re.error as err:
            raise VideosError(f"data.group_pattern = {pattern!r}: not a regular expression ({err})") from None
        if regex.groups < 1:
            raise VideosError(f"data.group_pattern = {pattern!r}: needs a (group) naming the source")
    for e in entries:
        if e.group:
            continue
        match = regex.search(e.name) if regex else None
        e.group = match.group(1) if match else e.name


def unit_hash(*parts: object) -> float:
    """A number in [0, 1) that depends only on ``parts`` (a seeded draw that other files cannot move)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(entries: list[VideoEntry], test_fraction: float, seed: int, root: Path) -> None:
    """Fixed splits are kept (a group on both sides is an error); every other group is held out when
    its seeded hash falls below ``test_fraction``, so adding or losing a file never moves another
    group across the split. Without fixed splits at least one group lands on each side."""
    usable = [e for e in entries if e.status == "listed"]
    fixed: dict[str, set[str]] = {}
    for e in usable:
        if e.split is not None:
            fixed.setdefault(e.group, set()).add(e.split)
    both = sorted(g for g, sides in fixed.items() if len(sides) > 1)
    if both:
        names = [e.name for e in usable if e.group == both[0]]
        raise VideosError(f"{root}: group {both[0]!r} is in both train and test ({names[:4]}): it would leak "
                          "into the held-out split; put all of a source on one side")
    drawn = sorted({e.group for e in usable if e.group not in fixed}, key=lambda g: unit_hash(seed, g))
    test_groups = {g for g in drawn if unit_hash(seed, g) < test_fraction}
    if not fixed:
        if len(drawn) < 2:
            raise VideosError(f"{root}: {len(drawn)} usable source group(s) {drawn[:1]}: a held-out split "
                              "needs at least 2 (add videos, a CSV split column, or train/ and test/ folders)")
        if not test_groups:
            test_groups = {drawn[0]}
        if len(test_groups) == len(drawn):
            test_groups.discard(drawn[-1])
    for e in usable:
        if e.split is None:
            e.split = next(iter(fixed[e.group])) if e.group in fixed else (
                "test" if e.group in test_groups else "train")


def dataset_hash(entries: list[VideoEntry]) -> str:
    """sha256 of the file list (name, content sha256, split) of every hashed, non-duplicate input."""
    h = hashlib.sha256()
    for e in sorted(entries, key=lambda e: e.name):
        if e.sha256 and e.status != "duplicate":
            h.update(f"{e.name}\t{e.sha256}\t{e.split}\n".encode())
    return h.hexdigest()


def plan_inputs(data_cfg: dict[str, Any], root: Path, seed: int) -> list[VideoEntry]:
    """List, deduplicate, group and split the inputs (no decoding)."""
    entries = list_inputs(root)
    mark_duplicates(entries)
    assign_groups(entries, data_cfg["group_pattern"])
    assign_splits(entries, data_cfg["test_fraction"], seed, root)
    return entries


# ---------------------------------------------------------------------------------------------------
# Decoding (in worker processes)


def copies_per_frame(source_fps: float | None, target_fps: float | None) -> tuple[float, str | None]:
    """Output frames per source frame (1 keeps every frame) and a note when ``target_fps`` cannot apply."""
    if target_fps is None:
        return 1.0, None
    if source_fps is None:
        return 1.0, "source frame rate unknown (frame folder): every frame kept"
    return target_fps / source_fps, None


def frame_iterator(source: VideoSource) -> Any:
    if isinstance(source, VideoFile):
        return iter_video(source.path)
    files = source.files()
    if not files:
        raise VideoDecodeError(f"{source.path}: no frame images")
    return iter_frames(files)


def walk_frames(
    source: VideoSource, opts: VideoOptions, fit: Callable[[np.ndarray], np.ndarray] | None,
    wanted: set[int] | None = None,
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Decode once, resampled to ``opts.fps``: output frames ``wanted`` (None = all) fitted by ``fit``
    (uint8 ``# t r r c``, in order; None when ``fit`` is None) and the file's facts: source frames,
    fps, size [w, h], output frames, shots (output frame ranges, when ``opts.shots``)."""
    source_fps = video_fps(source.path) if isinstance(source, VideoFile) else None
    ratio, note = copies_per_frame(source_fps, opts.fps)
    fitted, chunk, scores, previous, decoded, size, k = [], [], [], None, 0, None, 0
    for i, frame in enumerate(frame_iterator(source)):
        decoded, size = i + 1, [frame.shape[1], frame.shape[0]]
        # output frame k shows source frame floor(k / ratio); 1e-3 frame of slack absorbs rate rounding
        copies = math.ceil((i + 1) * ratio - 1e-3) - math.ceil(i * ratio - 1e-3)
        hsv = small_hsv(frame) if opts.shots and copies else None
        for _ in range(copies):
            if hsv is not None and previous is not None:
                scores.append(content_score(previous, hsv))
            previous = hsv
            if fit is not None and (wanted is None or k in wanted):
                chunk.append(frame)
            k += 1
        if len(chunk) >= CHUNK:
            fitted.append(fit(np.stack(chunk)))
            chunk = []
    if chunk:
        fitted.append(fit(np.stack(chunk)))
    shots = shots_from_scores(scores, k, opts.shot_threshold, opts.min_shot_frames) if opts.shots else [(0, k)]
    info = {"frames": decoded, "fps": source_fps, "size": size, "frames_used": k,
            "fps_used": opts.fps if opts.fps and source_fps else source_fps, "shots": [list(s) for s in shots]}
    if note:
        info["note"] = note
    if fit is None:
        return None, info
    return (np.concatenate(fitted) if fitted else np.zeros((0, 0, 0, 3), np.uint8)), info


def decode_fitted(
    source: VideoSource, resolution: int, resize_filter: str, opts: VideoOptions
) -> tuple[np.ndarray, dict[str, Any]]:
    """Every output frame fitted to ``resolution`` (uint8 ``# t r r c``) and the file's facts."""
    fit = FITS[opts.crop]
    frames, info = walk_frames(source, opts, lambda x: fit(x, resolution, resize_filter))
    return frames, info


def shot_starts(shots: list[list[int]], span: int) -> list[int]:
    """Every first frame of a ``span``-frame window that lies inside one shot."""
    return [s for a, b in shots for s in range(a, b - span + 1)]


def pick_starts(valid: list[int], mode: str, count: int, seed: int, name: str) -> list[int]:
    """``even``: ``count`` evenly spaced among the valid starts (with one shot: prepare.clip_starts);
    else one at a random position drawn from the seed and the file's name, not its place in the list."""
    if mode == "even":
        return sorted({valid[int(round(k))] for k in np.linspace(0, len(valid) - 1, count)})
    return [valid[int(unit_hash(seed, name) * len(valid))]]


def process_video(job: tuple) -> dict[str, Any]:
    """Worker of prepare._build_split for `videos`: clips within shots of one input. Two decoding
    passes: the first finds the frames and shots, the second fits only the frames the clips use
    (decoding is cheap next to resizing every frame of a long video)."""
    source, params, mode, count, seed, _, long_frames, opts = job
    try:
        _, info = walk_frames(source, opts, None)
    except (VideoDecodeError, OSError) as e:
        return {"name": source.name, "error": str(e)}
    need = max(params.span, params.min_frames)
    valid = shot_starts(info["shots"], params.span) if info["frames_used"] >= need else []
    if not valid:
        longest = max((b - a for a, b in info["shots"]), default=0)
        why = (f"too short: {info['frames_used']} frames < {need} needed" if info["frames_used"] < need else
               f"no shot of {params.span} frames (longest {longest} of {len(info['shots'])} shots)")
        return {"name": source.name, "error": why, "info": info}
    starts = pick_starts(valid, mode, count, seed, source.name)
    windows = [(s, params.span) for s in starts]
    long_span = (long_frames - 1) * params.frame_stride + 1 if long_frames else 0
    long_valid = shot_starts(info["shots"], long_span) if long_frames else []
    if long_valid:
        windows.append((pick_starts(long_valid, "random", 1, seed + 1, source.name)[0], long_span))
    wanted = sorted({f for s, span in windows for f in range(s, s + span, params.frame_stride)})
    fit = FITS[opts.crop]
    try:
        frames, _ = walk_frames(source, replace(opts, shots=False),
                                lambda x: fit(x, params.resolution, params.resize_filter), set(wanted))
        digest = content_hash(source)
    except (VideoDecodeError, OSError) as e:
        return {"name": source.name, "error": str(e)}
    row = {f: i for i, f in enumerate(wanted)}  # output frame -> row of ``frames``

    def clip(start: int, span: int) -> np.ndarray:  # t r r c
        return frames[[row[f] for f in range(start, start + span, params.frame_stride)]]

    info["clips"] = len(starts)
    result = {"name": source.name, "sha256": digest, "frames": info["frames_used"], "starts": starts,
              "clips": [clip(s, params.span) for s in starts], "info": info}
    if long_valid:
        result["long"] = (windows[-1][0], clip(*windows[-1]))
    return result


# ---------------------------------------------------------------------------------------------------
# The manifest


def file_rows(entries: list[VideoEntry], stores: dict[str, Any]) -> list[dict[str, Any]]:
    """One manifest row per listed input: split, group, status (used / skipped / duplicate) and why,
    with the decoded facts (frames, fps, size, shots, clips) of those that were decoded."""
    details, skipped = {}, {}
    for split in ("train", "test"):
        details |= stores[split].pop("file_info", {})
        skipped |= {s["path"]: s["reason"] for s in stores[split]["skipped"]["items"]}
    rows = []
    for e in entries:
        if e.status == "listed":
            e.status, e.reason = ("skipped", skipped[e.name]) if e.name in skipped else ("used", None)
        row = {"path": e.name, "split": e.split, "group": e.group, "sha256": e.sha256, "status": e.status}
        if e.reason:
            row["reason"] = e.reason
        rows.append(row | details.get(e.name, {}))
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts of the manifest rows, by status and (for the used ones) by split."""
    used = [r for r in rows if r["status"] == "used"]
    return {
        "listed": len(rows),
        **{status: sum(r["status"] == status for r in rows) for status in ("used", "skipped", "duplicate")},
        "train_videos": sum(r["split"] == "train" for r in used),
        "test_videos": sum(r["split"] == "test" for r in used),
        "shots": sum(len(r.get("shots", [])) for r in used),
    }
