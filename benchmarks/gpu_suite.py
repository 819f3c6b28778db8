"""Rates of the trainers' own step functions at the per-GPU batch a config runs, for `pvdm plan`.

Each item times the function the pipeline itself runs, on one device, at the batch one GPU of the
config's job runs (global batch / GPUs: the paper's autoencoder runs 8 clips on 8 GPUs = 1 per GPU, its
U-Net 64 samples on 8 GPUs = 8 per GPU), in the config's precision:

  ae_stage1     StageTrainer.step, stage 1 (generator update: L1 + LPIPS, grad_accum micro-batches)
  ae_gan        StageTrainer.step, GAN stage (generator and discriminator updates)
  unet_train    unet_update (epsilon loss, backward, AdamW; the config's amp)
  sampling      sample_batches at the sampling batch, DDIM at two step counts: a line through both
                gives the fixed part (decode) and the per-step part, scaled to the paper's 400 steps
  i3d           I3D features of 16-frame clips (pvdm.eval.fvd.compute_features, TF32 off)
  fp32_parity   the U-Net's fp32 loss and the autoencoder's fp32 output on the device against the CPU,
                TF32 off (pvdm.utils.device.metric_numerics): the largest differences

The rates go to ``<out-dir>/throughput.json`` (paper scale on a GPU; ``valid_for_planning`` true) or
``throughput_<scale>_<device>.json`` (anything else, refused by `pvdm plan`); every item's record,
with its status ("ok" or "error" and the message), to ``gpu_suite_<device>_<date>.json`` and ``.md``,
rewritten after each item. The exit status is 1 when any item did not run. The one cost model is
``pvdm.report.cost``: this script measures, `pvdm plan` turns rates into GPU-hours.

    python benchmarks/gpu_suite.py --device cuda --scale paper --out-dir benchmarks/results/gpu
    python benchmarks/gpu_suite.py --device cpu --scale tiny --out-dir /tmp/suite   # the CPU test's run
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pvdm.config import load_config, validate  # noqa: E402
from pvdm.dag import Dag  # noqa: E402
from pvdm.data.store import ClipStore, ClipStoreWriter  # noqa: E402
from pvdm.diffusion.samplers import Sampler  # noqa: E402
from pvdm.diffusion.schedule import NoiseSchedule, training_loss  # noqa: E402
from pvdm.models.autoencoder import AutoencoderConfig, TriplaneAutoencoder  # noqa: E402
from pvdm.models.unet import TriplaneUNet  # noqa: E402
from pvdm.report.cost import per_gpu_batch  # noqa: E402
from pvdm.sample import SamplingModels, sample_batches  # noqa: E402
from pvdm.train.autoencoder import StageTrainer  # noqa: E402
from pvdm.train.diffusion import unet_config, unet_update  # noqa: E402
from pvdm.train.loop import TrainingRun  # noqa: E402
from pvdm.utils.device import Precision, metric_numerics, resolve_device  # noqa: E402
from pvdm.utils.io import atomic_write_json, atomic_write_text  # noqa: E402

SCHEMA = "pvdm-throughput/2"  # rates per GPU at a stated per-GPU batch
ITEM_NAMES = ["ae_stage1", "ae_gan", "unet_train", "sampling", "i3d", "fp32_parity"]

# The tiny experiment of the CPU check: the pipeline's code paths at a width a 2-core CPU runs in seconds.
TINY_AE = dict(resolution=32, frames=8, patch_size=8, channels=32, depth=1, heads=2, dim_head=16, proj_depth=1,
               proj_heads=2, proj_dim_head=16, proj_mlp_dim=64)
TINY_EXPERIMENT = {
    "seed": 0,
    "data": {"dataset": "moving_mnist", "resolution": 32, "clip_frames": 16, "long_frames": 0},
    "autoencoder": {
        "model": TINY_AE,
        "stage1": {"steps": 10, "batch_size": 1, "eval_videos": 1},
        "gan": {"steps": 10, "batch_size": 1, "eval_videos": 1, "disc_ndf": 8},
    },
    "diffusion": {"model": {"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1,
                            "attention_resolutions": [2], "num_heads": 2},
                  "train": {"steps": 10, "batch_size": 2}},
    "sampling": {"batch_size": 2},
}
TINY_BATCHES = {"ae_stage1": 1, "ae_gan": 1, "unet_train": 2, "sampling": 2, "i3d": 1}
SAMPLE_STEPS = {"paper": (10, 20), "tiny": (2, 4)}  # the two DDIM step counts timed
REPEATS = {"paper": (2, 5), "tiny": (1, 2)}  # (warm-up, timed) calls per measurement


def experiment(scale: str, config: str, name: str) -> tuple[dict[str, Any], dict[str, int]]:
    """The experiment's settings and the per-GPU batch of each item (global batch / the job's GPUs)."""
    if scale == "tiny":
        return validate(TINY_EXPERIMENT, "gpu_suite tiny", definition="experiment"), dict(TINY_BATCHES)
    cfg = load_config(REPO / config)
    e = Dag(cfg)[name]
    exp = cfg["experiments"][name]
    batches = {
        "ae_stage1": per_gpu_batch(e, "train_autoencoder", exp["autoencoder"]["stage1"]["batch_size"])[1],
        "ae_gan": per_gpu_batch(e, "finetune_gan", exp["autoencoder"]["gan"]["batch_size"])[1],
        "unet_train": per_gpu_batch(e, "train_diffusion", exp["diffusion"]["train"]["batch_size"])[1],
        "sampling": exp["sampling"]["batch_size"],  # one GPU per sampling shard
        "i3d": 32,
    }
    return exp, batches


def synthetic_store(path: Path, clips: int, frames: int, resolution: int) -> ClipStore:
    """A clip store of random uint8 clips (the rates do not depend on the pixels)."""
    rng = np.random.default_rng(0)
    writer = ClipStoreWriter(path, frames, resolution)
    video = writer.add_video("synthetic")
    for i in range(clips):
        writer.add_clip(rng.integers(0, 256, (frames, resolution, resolution, 3), dtype=np.uint8), video, i)
    return ClipStore(writer.close())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[int], Any], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``fn(i)`` over ``repeats`` calls after ``warmup`` calls (the device synchronised)."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(warmup, warmup + repeats):
        sync(device)
        t0 = time.perf_counter()
        fn(i)
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class Suite:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = resolve_device(args.device)
        self.exp, self.batches = experiment(args.scale, args.config, args.experiment)
        self.warmup, self.repeats = REPEATS[args.scale]
        self.work = Path(tempfile.mkdtemp(prefix="pvdm_gpu_suite_"))
        ae = self.exp["autoencoder"]["model"]
        clips = max(8, 2 * max(self.batches["ae_stage1"], self.batches["ae_gan"]))  # only the trainers read clips
        frames = max(self.exp["data"]["clip_frames"], ae["frames"])
        self.train = synthetic_store(self.work / "data" / "train", clips, frames, ae["resolution"])
        self.test = synthetic_store(self.work / "data" / "test", 2, frames, ae["resolution"])
        self.rates: dict[str, list[dict[str, Any]]] = {}
        self.items: dict[str, dict[str, Any]] = {}
        self.header = header(self.device, args)

    # --- the items -----------------------------------------------------------------------------------

    def stage(self, stage: str) -> dict[str, Any]:
        b = self.batches[f"ae_{'stage1' if stage == 'stage1' else 'gan'}"]
        exp = json.loads(json.dumps(self.exp))
        tcfg = exp["autoencoder"][stage]
        tcfg.update(batch_size=b, steps=10**6, save_every=10**6, log_every=10**6)
        model_cfg = AutoencoderConfig.from_dict(exp["autoencoder"]["model"])
        out = self.work / stage
        with TrainingRun(out, {}, seed=0, steps=10**6, save_every=10**6, log_every=10**6, device=str(self.device),
                         amp=tcfg["amp"], desc=stage) as run:
            trainer = StageTrainer(run, exp, stage, model_cfg, self.train, self.test, None, out)
            trainer.wrap()
            losses: list[float] = []
            s = seconds_per_call(lambda i: losses.append(trainer.step(i)["g/total"]), self.device, self.warmup,
                                 self.repeats)
        if not all(np.isfinite(losses)):
            raise FloatingPointError(f"non-finite {stage} losses {losses}")
        clips = b * tcfg["grad_accum"]
        name = "ae_train_clips_per_s" if stage == "stage1" else "gan_train_clips_per_s"
        precision = precision_label(self.device, tcfg["amp"])
        self.rate(name, clips / s, b, precision=precision, grad_accum=tcfg["grad_accum"])
        return {"step_s": s, "per_gpu_batch": b, "grad_accum": tcfg["grad_accum"], "clips_per_s": clips / s,
                "precision": precision, "last_loss": losses[-1]}

    def ae_stage1(self) -> dict[str, Any]:
        return self.stage("stage1")

    def ae_gan(self) -> dict[str, Any]:
        return self.stage("gan")

    def models(self) -> tuple[TriplaneAutoencoder, TriplaneUNet]:
        torch.manual_seed(0)
        ae = TriplaneAutoencoder(AutoencoderConfig.from_dict(self.exp["autoencoder"]["model"]))
        unet = TriplaneUNet(unet_config(self.exp["diffusion"]["model"], ae))
        return ae.to(self.device).eval(), unet.to(self.device)

    def unet_train(self) -> dict[str, Any]:
        b = self.batches["unet_train"]
        tcfg = {**self.exp["diffusion"]["train"], "batch_size": b}
        with TrainingRun(self.work / "unet", {}, seed=0, steps=10**6, save_every=10**6, log_every=10**6,
                         device=str(self.device), amp=tcfg["amp"], desc="unet") as run:
            ae, model = self.models()
            cfg, schedule = model.cfg, NoiseSchedule()
            opt = torch.optim.AdamW(model.parameters(), lr=tcfg["lr"], weight_decay=tcfg["weight_decay"])
            scaler = run.precision.scaler()
            z = torch.randn(b, cfg.in_channels, ae.cfg.latent_length, device=self.device)  # b c l
            c = torch.zeros_like(z) if cfg.cond else None
            losses: list[float] = []

            def step(i: int) -> None:
                loss = unet_update(model, model, opt, scaler, z, c, torch.Generator().manual_seed(i), slice(0, b),
                                   schedule, cfg, tcfg, run)
                losses.append(loss.item())

            s = seconds_per_call(step, self.device, self.warmup, self.repeats)
        if not all(np.isfinite(losses)):
            raise FloatingPointError(f"non-finite U-Net losses {losses}")
        precision = precision_label(self.device, tcfg["amp"])
        self.rate("unet_train_samples_per_s", b / s, b, precision=precision)
        return {"step_s": s, "per_gpu_batch": b, "samples_per_s": b / s, "precision": precision,
                "last_loss": losses[-1]}

    def sampling(self) -> dict[str, Any]:
        b, amp = self.batches["sampling"], self.exp["sampling"]["amp"]
        ae, unet = self.models()
        unet.eval()
        times = {}
        for k, steps in enumerate((SAMPLE_STEPS[self.args.scale][0], *SAMPLE_STEPS[self.args.scale])):
            m = SamplingModels(ae, unet, Sampler("ddim", steps, 1.0), self.device, amp, "autoencoder", "unet")
            parts = self.work / f"samples_{k}"
            parts.mkdir()
            sync(self.device)
            t0 = time.perf_counter()
            sample_batches(m, parts, [(0, b)], seed=0, n_clips=1, desc=f"sampling ({steps} steps)")
            sync(self.device)
            times[steps] = time.perf_counter() - t0  # the first count twice: the first call warms up
        (k1, k2), t = SAMPLE_STEPS[self.args.scale], times
        per_step = max((t[k2] - t[k1]) / (k2 - k1), 0.0)
        fixed = max(t[k1] - k1 * per_step, 0.0)  # decode, writing the batch
        s_per_clip = (fixed + 400 * per_step) / b
        precision = precision_label(self.device, amp)
        self.rate("sample_s_per_clip", s_per_clip, b, precision=precision, sampler="ddim400_eta1",
                  timed_steps=[k1, k2])
        return {"per_gpu_batch": b, "batch_s": {str(k): v for k, v in t.items()}, "per_step_s": per_step,
                "fixed_s": fixed, "s_per_clip_400": s_per_clip, "precision": precision}

    def i3d(self) -> dict[str, Any]:
        from pvdm.eval.fvd import compute_features
        from pvdm.eval.i3d import load_i3d

        b = self.batches["i3d"]
        model = load_i3d(self.device)
        res = self.exp["autoencoder"]["model"]["resolution"]
        clips = np.random.default_rng(0).integers(0, 256, (b, 16, res, res, 3), dtype=np.uint8)
        warmup, repeats = (0, 1) if self.args.scale == "tiny" else (1, self.repeats)  # I3D is slow on a CPU
        s = seconds_per_call(lambda i: compute_features(clips, model, self.device, batch_size=b), self.device,
                             warmup, repeats)
        self.rate("i3d_16f_clips_per_s", b / s, None, batch=b)
        return {"batch": b, "batch_s": s, "clips_per_s": b / s}

    def fp32_parity(self) -> dict[str, Any]:
        """fp32 on the device against the CPU with TF32 off: what metric_numerics promises."""
        ae, unet = self.models()
        b = min(self.batches["unet_train"], 2)
        cpu_ae, cpu_unet = (copy.deepcopy(m).to("cpu").eval() for m in (ae, unet))
        unet.eval()
        gen = torch.Generator().manual_seed(0)
        res, frames = ae.cfg.resolution, ae.cfg.frames
        x = torch.rand(1, 3, frames, res, res, generator=gen) * 2 - 1  # b c t h w
        z = torch.randn(b, unet.cfg.in_channels, ae.cfg.latent_length, generator=gen)  # b c l
        t = torch.randint(0, 1000, (b,), generator=gen)
        noise = torch.randn(z.shape, generator=gen)
        cond = torch.zeros_like(z) if unet.cfg.cond else None
        out = {}
        with metric_numerics(), torch.no_grad():
            a = ae(x.to(self.device)).cpu()
            out["ae_max_abs_diff"] = float((a - cpu_ae(x)).abs().max())
            kw = dict(loss_type="l2", schedule=NoiseSchedule(), prediction=unet.cfg.prediction)
            dev = [v.to(self.device) if v is not None else None for v in (z, t, noise, cond)]
            loss_dev = training_loss(unet, dev[0], t=dev[1], noise=dev[2], cond=dev[3], **kw).item()
            loss_cpu = training_loss(cpu_unet, z, t=t, noise=noise, cond=cond, **kw).item()
        out["unet_loss_device"], out["unet_loss_cpu"] = loss_dev, loss_cpu
        out["unet_loss_rel_diff"] = abs(loss_dev - loss_cpu) / max(abs(loss_cpu), 1e-12)
        out["tf32"] = "off (matmul and cuDNN)"
        return out

    # --- running and writing -------------------------------------------------------------------------

    def rate(self, name: str, value: float, per_gpu: int | None, **extra: Any) -> None:
        entry = {"value": value, **({"per_gpu_batch": per_gpu} if per_gpu is not None else {}), **extra}
        self.rates.setdefault(name, []).append(entry)

    def run(self) -> int:
        for name in self.args.items or ITEM_NAMES:
            t0 = time.perf_counter()
            try:
                rec = {"status": "ok", **getattr(self, name)()}
            except Exception as e:  # noqa: BLE001 - every failure is recorded, the next item still runs
                rec = {"status": "error", "error": f"{type(e).__name__}: {e}",
                       "traceback": traceback.format_exc(limit=6)}
            rec["wall_s"] = time.perf_counter() - t0
            self.items[name] = rec
            print(f"{name:12s} {rec['status']:6s} {rec['wall_s']:7.1f} s  {rec.get('error', '')}", flush=True)
            self.write()
        failed = [n for n, r in self.items.items() if r["status"] != "ok"]
        if failed:
            print(f"items that did not run: {', '.join(failed)}", file=sys.stderr)
        return 1 if failed else 0

    def write(self) -> None:
        out = Path(self.args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        h = self.header
        stem = f"gpu_suite_{h['device_name'].replace(' ', '-')}_{h['date']}"
        atomic_write_json(out / f"{stem}.json", {"header": h, "items": self.items})
        atomic_write_text(out / f"{stem}.md", render_markdown(h, self.items))
        valid = h["scale"] == "paper" and self.device.type == "cuda"
        name = "throughput.json" if valid else f"throughput_{h['scale']}_{self.device.type}.json"
        atomic_write_json(out / name, {
            "schema": SCHEMA, "valid_for_planning": valid,
            "measured_on": {"gpu": h["gpu"], "device": h["device_name"], "torch": h["torch"], "cuda": h["cuda"],
                            "date": h["date"], "scale": h["scale"], "suite_json": f"{stem}.json"},
            "config": h["config"], "experiment": h["experiment"], "rates": self.rates,
        })


def precision_label(device: torch.device, amp: str) -> str:
    """What a step ran in: the config's amp and the dtype Precision chose on this device."""
    dtype = Precision(device, amp).dtype or torch.float32
    return f"amp {amp}: {str(dtype).removeprefix('torch.')}"


def header(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"device": str(device), "gpu": gpu, "device_name": gpu or f"cpu-{cpu}", "cpu": cpu,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "date": datetime.date.today().isoformat(), "scale": args.scale,
            "config": args.config if args.scale == "paper" else "built-in tiny experiment",
            "experiment": args.experiment if args.scale == "paper" else "tiny"}


def render_markdown(h: dict[str, Any], items: dict[str, dict[str, Any]]) -> str:
    lines = [f"# gpu_suite: {h['device_name']} ({h['date']}, torch {h['torch']}, scale {h['scale']})", "",
             "| item | status | wall s | figures |", "|---|---|---|---|"]
    for name, rec in items.items():
        figures = {k: v for k, v in rec.items() if k not in ("status", "wall_s", "traceback")}
        text = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
        lines.append(f"| {name} | {rec['status']} | {rec['wall_s']:.1f} | {text} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:K (default: a GPU if there is one)")
    ap.add_argument("--scale", choices=["paper", "tiny"], default="paper")
    ap.add_argument("--config", default="config/ucf101.yaml", help="the config whose per-GPU batches are timed")
    ap.add_argument("--experiment", default="ucf101")
    ap.add_argument("--items", nargs="+", choices=ITEM_NAMES, help="only these items")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads")
    ap.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results" / "gpu"))
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return Suite(args).run()


if __name__ == "__main__":
    sys.exit(main())
