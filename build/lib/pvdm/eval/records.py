"""Metric records: what an evaluation stage writes and the report reads, validated both ways.

Each record carries its value(s), the interval, the real-vs-real floor where there is one, and the
protocol card (an open dict: dataset, split, N, frames, resolution, sampler, seeds, weight sha256,
code version ...). ``to_json`` / ``from_json`` keep the on-disk JSON of earlier versions; ``read``
names the file and the key of anything malformed, so no reader validates by hand.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

from pvdm.utils.io import atomic_write_json


class RecordError(ValueError):
    """A metric file that does not hold the record it should; the message names file and key."""


def _number(d: dict[str, Any], key: str, where: str, optional: bool = False) -> float | None:
    v = d.get(key)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise RecordError(f"{where}: '{key}' must be a finite number, got {v!r}")
    return float(v)


def _integer(d: dict[str, Any], key: str, where: str) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise RecordError(f"{where}: '{key}' must be an integer, got {v!r}")
    return v


def _object(d: dict[str, Any], key: str, where: str, optional: bool = False) -> dict[str, Any] | None:
    v = d.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, dict):
        raise RecordError(f"{where}: '{key}' must be an object, got {v!r}")
    return v


def _interval(d: dict[str, Any], key: str, where: str) -> tuple[float, float] | None:
    iv = d.get(key)
    if iv is None:
        return None
    if not (isinstance(iv, list) and len(iv) == 2 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in iv)):
        raise RecordError(f"{where}: '{key}' must be null or [lo, hi], got {iv!r}")
    return float(iv[0]), float(iv[1])


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with open(path) as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: not valid JSON ({e}); rerun the job that wrote it") from None
    except UnicodeDecodeError as e:
        raise RecordError(f"{path}: not a text file ({e})") from None
    if not isinstance(obj, dict):
        raise RecordError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


@dataclass(frozen=True)
class RealFloor:
    """FVD between two disjoint subsets of ``n`` real clips: what a perfect model would score."""

    value: float
    n: int | None
    seed: int | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "n": self.n, "seed": self.seed, "note": self.note}

    @classmethod
    def from_json(cls, d: Any, where: str) -> RealFloor:
        if not isinstance(d, dict):
            raise RecordError(f"{where}: 'real_floor' must be null or an object, got {d!r}")
        return cls(_number(d, "value", f"{where} real_floor"), d.get("n"), d.get("seed"), d.get("note"))


@dataclass(frozen=True)
class FVDRecord:
    """One FVD (``pvdm fvd``, or the R-FVD inside a reconstruction record)."""

    metric: str  # e.g. "fvd2048_16f"
    value: float  # Fréchet distance by scipy sqrtm
    protocol: dict[str, Any]
    value_eig: float | None = None  # the eigenvalue cross-check
    interval95: tuple[float, float] | None = None
    interval: dict[str, Any] | None = None  # method, target, rounds, seed of interval95
    expected_bias: float | None = None  # estimated E[FVD_N] - FVD (the finite-N bias), see pvdm.eval.intervals
    real_floor: RealFloor | None = None
    seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "metric": self.metric,
            "value": self.value,
            "value_eig": self.value_eig,
            "interval95": list(self.interval95) if self.interval95 is not None else None,
            "interval": self.interval,
            "expected_bias": self.expected_bias,
            "real_floor": self.real_floor.to_json() if self.real_floor is not None else None,
            "protocol": self.protocol,
        }
        if self.seconds is not None:
            out["seconds"] = self.seconds
        return out

    @classmethod
    def from_json(cls, d: Any, where: str) -> FVDRecord:
        if not isinstance(d, dict):
            raise RecordError(f"{where}: expected an FVD metric object, got {type(d).__name__}")
        floor = d.get("real_floor")
        return cls(
            metric=str(d.get("metric", "fvd")),
            value=_number(d, "value", where),
            protocol=_object(d, "protocol", where),
            value_eig=_number(d, "value_eig", where, optional=True),
            interval95=_interval(d, "interval95", where),
            # files written before the half-sample interval call its description "bootstrap"
            interval=_object(d, "interval" if "interval" in d else "bootstrap", where, optional=True),
            expected_bias=_number(d, "expected_bias", where, optional=True),
            real_floor=RealFloor.from_json(floor, where) if floor is not None else None,
            seconds=_number(d, "seconds", where, optional=True),
        )

    @classmethod
    def read(cls, path: str | os.PathLike) -> FVDRecord:
        return cls.from_json(read_json_object(path), str(path))

    def write(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_json())


@dataclass(frozen=True)
class ReconRecord:
    """Reconstruction quality of an autoencoder on held-out clips (``pvdm recon-metrics``)."""

    psnr: float
    ssim: float
    lpips: float
    num_videos: int
    split: str
    protocol: dict[str, Any]
    rfvd: FVDRecord | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "psnr": self.psnr,
            "ssim": self.ssim,
            "lpips": self.lpips,
            "num_videos": self.num_videos,
            "rfvd": self.rfvd.to_json() if self.rfvd is not None else None,
            "split": self.split,
            "protocol": self.protocol,
        }

    @classmethod
    def from_json(cls, d: Any, where: str) -> ReconRecord:
        if not isinstance(d, dict):
            raise RecordError(f"{where}: expected a reconstruction metric object, got {type(d).__name__}")
        split = d.get("split")
        if not isinstance(split, str):
            raise RecordError(f"{where}: 'split' must be a string, got {split!r}")
        rfvd = d.get("rfvd")
        return cls(
            psnr=_number(d, "psnr", where),
            ssim=_number(d, "ssim", where),
            lpips=_number(d, "lpips", where),
            num_videos=_integer(d, "num_videos", where),
            split=split,
            protocol=_object(d, "protocol", where, optional=True) or {},
            rfvd=FVDRecord.from_json(rfvd, f"{where} rfvd") if rfvd is not None else None,
        )

    @classmethod
    def read(cls, path: str | os.PathLike) -> ReconRecord:
        return cls.from_json(read_json_object(path), str(path))

    def write(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_json())


@dataclass(frozen=True)
class ISRecord:
    """Inception Score of generated videos with the UCF-101 C3D (``pvdm is``): mean and std over splits."""

    metric: str  # e.g. "isv2048_ucf"
    value: float
    std: float
    splits: int
    num_videos: int
    frames: int
    protocol: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "std": self.std, "splits": self.splits,
                "num_videos": self.num_videos, "frames": self.frames, "protocol": self.protocol}

    @classmethod
    def from_json(cls, d: Any, where: str) -> ISRecord:
        if not isinstance(d, dict):
            raise RecordError(f"{where}: expected an IS metric object, got {type(d).__name__}")
        return cls(
            metric=str(d.get("metric", "is")),
            value=_number(d, "value", where),
            std=_number(d, "std", where),
            splits=_integer(d, "splits", where),
            num_videos=_integer(d, "num_videos", where),
            frames=_integer(d, "frames", where),
            protocol=_object(d, "protocol", where),
        )

    @classmethod
    def read(cls, path: str | os.PathLike) -> ISRecord:
        return cls.from_json(read_json_object(path), str(path))

    def write(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_json())
