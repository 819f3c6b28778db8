"""Quality-per-CPU-second search for the embedded Moving-MNIST demo (issue 11).

Every run goes through the project's own code paths (``pvdm.train.autoencoder.train_autoencoder``,
``pvdm.train.diffusion.train_diffusion``, ``pvdm.sample.generate``, ``pvdm.eval``), configured only with
config values (dotted overrides of config/config.yaml). Cost is *process CPU time* (time.process_time)
because the machine is shared; run with ``OMP_NUM_THREADS=1 nice -n 5``. Results are appended as JSON
lines to benchmarks/demo_search/results/*.jsonl; scratch outputs go to /tmp/demo_search/.

Sub-commands (``python search.py SUB --help``)::

  data   NAME [KEY=VALUE ...]        pvdm prepare into /tmp/demo_search/data/NAME (overrides relative to
                                     experiments.mnist, e.g. data.resolution=32)
  ae     NAME --data D --at 100,200,400 [--schedule cos:W] [--stage stage1|gan --init CKPT] [KEY=VALUE ...]
                                     train the autoencoder in chunks (resumable state.pt), and after each
                                     chunk evaluate held-out PSNR/SSIM on --eval-videos clips; the CPU time of
                                     training and of evaluation are recorded separately
  grid   CKPT --data D --out PNG     real-vs-reconstruction strip of held-out clips
  dm     NAME --data D --ae CKPT --at 100,200 [KEY=VALUE ...]
                                     train the U-Net in chunks; after each chunk sample --sample-n clips
                                     (DDIM, eta 1) from the EMA and the raw weights, save a PNG strip, and
                                     optionally compute FVD16 (--fvd-n N) against the cached real features
  fvd    ...                         see ``fvd --help``

``--schedule cos:W`` (autoencoder or diffusion) wraps torch.optim.AdamW *in this process only* with linear
warm-up over W steps then cosine decay to 0 at the configured ``steps``: used to test whether an lr schedule
key is worth adding to the schema (the project has none today).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

HERE = Path(__file__).resolve().parent
SCRATCH = Path(os.environ.get("DEMO_SEARCH_SCRATCH", "/tmp/demo_search"))
RESULTS = HERE / "results"
EXP = "mnist"
# The code under test: a `git archive HEAD` snapshot (the working tree is being refactored while we
# measure), or the repository itself when no snapshot exists.
SRC = Path(os.environ.get("PVDM_SRC", SCRATCH / "snap"))
if not (SRC / "pvdm").is_dir():
    SRC = HERE.parents[1]
sys.path.insert(0, str(SRC))


def load_exp(overrides: list[str], config: Path = SRC / "config" / "config.yaml") -> dict:
    from pvdm.config import experiment, load_config

    dotted = [o if o.startswith("experiments.") else f"experiments.{EXP}.{o}" for o in overrides]
    cfg = load_config([config], dotted)
    return experiment(cfg, EXP)[1]


def append(name: str, row: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"{name}.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def cpu() -> float:
    return time.process_time()


# --------------------------------------------------------------------------------------------
# lr schedule (test only: monkeypatches AdamW in this process)


def install_schedule(spec: str | None, total: int) -> None:
    if not spec:
        return
    import torch

    kind, warm = spec.split(":")
    warm = int(warm)
    base_cls = torch.optim.AdamW

    class ScheduledAdamW(base_cls):  # type: ignore[misc, valid-type]
        def step(self, closure=None):  # noqa: ANN001
            p0 = self.param_groups[0]["params"][0]
            st = self.state.get(p0, {})
            k = int(st["step"]) if "step" in st else 0  # steps already taken (restored on resume)
            if k < warm:
                f = (k + 1) / warm
            elif kind == "cos":
                f = 0.5 * (1 + math.cos(math.pi * min(1.0, (k - warm) / max(1, total - warm))))
            else:  # "const": warm-up only
                f = 1.0
            for g in self.param_groups:
                g.setdefault("base_lr", g["lr"])
                g["lr"] = g["base_lr"] * f
            return super().step(closure)

    torch.optim.AdamW = ScheduledAdamW


# --------------------------------------------------------------------------------------------


def cmd_data(args: argparse.Namespace) -> None:
    from pvdm.data.prepare import prepare

    exp = load_exp(args.overrides)
    out = SCRATCH / "data" / args.name
    t0 = cpu()
    prepare(exp, out)
    print(json.dumps({"data": args.name, "cpu_s": round(cpu() - t0, 2)}))


def eval_ae(model_path: Path, data: Path, n: int, frames: int) -> dict:
    from pvdm.checkpoints import load_autoencoder
    from pvdm.data.store import ClipStore
    from pvdm.eval.reconstruction import recon_metrics

    model = load_autoencoder(model_path, map_location="cpu")
    return recon_metrics(model, ClipStore(data / "test"), n, frames, with_lpips=False)


def state_to_model(state_path: Path, out: Path, cfg_dict: dict) -> Path:
    import torch

    from pvdm.checkpoints import save_autoencoder
    from pvdm.models.autoencoder import AutoencoderConfig, TriplaneAutoencoder

    st = torch.load(state_path, map_location="cpu", weights_only=True)  # our own state file: tensors, numbers, lists
    m = TriplaneAutoencoder(AutoencoderConfig.from_dict(cfg_dict))
    m.load_state_dict(st["model"])
    save_autoencoder(m, out)
    return out


def cmd_ae(args: argparse.Namespace) -> None:
    import torch

    from pvdm.train.autoencoder import train_autoencoder

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    ov = list(args.overrides)
    at = [int(a) for a in args.at.split(",")]
    # steps = last + 1: every chunk stops through max_steps, so finish() (untrained + trained evaluation
    # with LPIPS, recon grid video) never runs inside the measured training time.
    # (a fixed 10**6 without a schedule, so that a run can be extended later by resuming its state.pt)
    total = at[-1] + 1 if args.schedule else 10**6
    ov.append(f"autoencoder.{args.stage}.steps={total}")
    exp = load_exp(ov)
    tcfg = exp["autoencoder"][args.stage]
    tcfg["save_every"] = 10**9
    tcfg["log_every"] = 10
    if args.stage == "gan":
        tcfg["eval_every"] = 10**9 if args.no_early_stop else tcfg["eval_every"]
    install_schedule(args.schedule, at[-1])
    data = SCRATCH / "data" / args.data
    out = SCRATCH / "ae" / args.name
    out.mkdir(parents=True, exist_ok=True)
    frames = exp["autoencoder"]["model"]["frames"]
    # cumulative training CPU of earlier invocations (a run extended by resuming its state.pt)
    ledger = out / f"cpu_{args.stage}.json"
    prev = json.loads(ledger.read_text()) if ledger.exists() else {}
    train_cpu, wall = prev.get("train_cpu", 0.0), prev.get("wall", 0.0)
    for k in at:
        if k <= prev.get("step", 0):
            continue  # already trained and evaluated
        t0, w0 = cpu(), time.monotonic()
        train_autoencoder(exp, data, out, args.stage, args.init, "cpu", max_steps=k)
        train_cpu += cpu() - t0
        wall += time.monotonic() - w0
        ledger.write_text(json.dumps({"step": k, "train_cpu": train_cpu, "wall": wall}))
        snap = out / f"model_{k}.pt"
        state_to_model(out / "state.pt", snap, exp["autoencoder"]["model"])
        t1 = cpu()
        m = eval_ae(snap, data, args.eval_videos, frames)
        row = {
            "run": args.name,
            "stage": args.stage,
            "step": k,
            "train_cpu_s": round(train_cpu, 1),
            "train_wall_s": round(wall, 1),
            "psnr": round(m["psnr"], 3),
            "ssim": round(m["ssim"], 4),
            "eval_cpu_s": round(cpu() - t1, 1),
            "eval_videos": m["num_videos"],
            "data": args.data,
            "overrides": args.overrides,
            "schedule": args.schedule,
            "threads": torch.get_num_threads(),
        }
        append(args.log, row)
        print(json.dumps(row), flush=True)


def cmd_grid(args: argparse.Namespace) -> None:
    import numpy as np
    from PIL import Image

    from pvdm.checkpoints import load_autoencoder
    from pvdm.data.store import ClipStore
    from pvdm.eval.reconstruction import reconstruct

    model = load_autoencoder(args.ckpt, map_location="cpu")
    store = ClipStore(SCRATCH / "data" / args.data / "test")
    real, rec = next(reconstruct(model, store, args.n, model.cfg.frames, args.n))
    rows = []
    for r, x in zip(real, rec, strict=True):
        rows.append(np.concatenate(list(r[:: args.every]), axis=1))
        rows.append(np.concatenate(list(x[:: args.every]), axis=1))
    img = np.concatenate(rows, axis=0)
    im = Image.fromarray(img)
    if args.scale != 1:
        im = im.resize((im.width * args.scale, im.height * args.scale), Image.NEAREST)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    im.save(args.out)
    print(args.out)


def save_unet_from_state(state_path: Path, out_dir: Path, tag: str) -> dict[str, Path]:
    """model/ema checkpoints of a (chunked) diffusion run's state.pt."""
    import torch

    from pvdm.checkpoints import save_diffusion
    from pvdm.models.unet import TriplaneUNet, UNetConfig

    st = torch.load(state_path, map_location="cpu", weights_only=True)  # our own state file: tensors, numbers, lists
    cfg = None
    out = {}
    for key, sd in (("model", st["model"]), ("ema", st["ema"]["model"])):
        if cfg is None:
            cfg = json.loads((out_dir / "unet_config.json").read_text())
        m = TriplaneUNet(UNetConfig.from_dict(cfg))
        m.load_state_dict(sd)
        path = out_dir / f"{key}_{tag}.pt"
        save_diffusion(m, path)
        out[key] = path
    return out


def fvd16(real_dir: Path, fake_dir: Path, n: int, cache: Path | None = SCRATCH / "fvdcache") -> dict:
    """FVD16 with the project's protocol (pvdm fvd defaults; real features cached per protocol)."""
    from pvdm.eval.fvd import evaluate_fvd
    from pvdm.eval.videos import load_videos as _load_videos

    real, real_src = _load_videos(real_dir, 0)
    fake, fake_src = _load_videos(fake_dir, 0)
    t0 = cpu()
    m = evaluate_fvd(real, fake, num_videos=n, frames=16, bootstrap_rounds=100, device="cpu",
                     cache_dir=cache, real_source=real_src, fake_source=fake_src)
    return {"fvd": round(m.value, 2), "interval95": [round(v, 1) for v in m.interval95],
            "floor": round(m.real_floor.value, 2), "floor_n": m.real_floor.n,
            "fvd_cpu_s": round(cpu() - t0, 1), "n": m.protocol["num_fake"]}


def real_features(data: Path, n: int = 128) -> np.ndarray:
    """I3D features of the first n real clips (pvdm fvd's real selection: data/train, first_n_sorted, seed 0,
    one random 16-frame window per video), computed once and cached; the first k rows are the N=k set."""
    import numpy as np

    from pvdm.eval.fvd import compute_features, iter_clips, select_clips
    from pvdm.eval.videos import load_videos as _load_videos

    path = SCRATCH / "feats" / f"{data.name}_train_real_{n}.npy"
    if path.exists():
        return np.load(path)
    videos, _ = _load_videos(data / "train", 0)
    sel = select_clips([videos.shape[1]] * len(videos), n, 16, "first_n_sorted", 0)
    t0 = cpu()
    f = compute_features(iter_clips(videos, sel, 16), device="cpu", total=len(sel), desc="I3D real")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, f)
    append("i3d_real", {"data": data.name, "n": n, "cpu_s": round(cpu() - t0, 1)})
    return f


def fake_features(clips_dir: Path, n: int) -> tuple[np.ndarray, float]:
    from pvdm.eval.fvd import compute_features, iter_clips, select_clips
    from pvdm.eval.videos import load_videos as _load_videos

    videos, _ = _load_videos(clips_dir, 0)
    sel = select_clips([videos.shape[1]] * len(videos), n, 16, "first_n_from_start", 0)
    t0 = cpu()
    f = compute_features(iter_clips(videos, sel, 16), device="cpu", total=len(sel), desc="I3D fake")
    return f, cpu() - t0


def fvd_numbers(real_f, fake_f) -> dict:
    """What pvdm fvd reports, from features: the value at N (= fake clips, against the first N real ones),
    the half-sample interval of E[FVD_N], the real-vs-real floor at the same N (two disjoint sets of N
    from the first 2N real clips, eval.floor_videos = N) and at N/2 (two halves of the N, the protocol's
    default)."""
    from pvdm.eval.fvd import fvd_from_features, real_floor
    from pvdm.eval.intervals import fixed_n

    n = len(fake_f)
    real_n = real_f[:n]
    lo, hi = fixed_n(real_n, fake_f, 100, 0)
    out = {"n": n, "fvd": round(fvd_from_features(real_n, fake_f), 2), "interval95": [round(lo, 1), round(hi, 1)],
           "floor_half": round(real_floor(real_n, n // 2, 0), 2)}
    if len(real_f) >= 2 * n:
        out["floor"] = round(real_floor(real_f[: 2 * n], n, 0), 2)
        out["ratio"] = round(out["fvd"] / out["floor"], 2)
    return out


def strip_png(clips_dir: Path, out: Path, n: int = 6, every: int = 2, scale: int = 2) -> Path:
    import numpy as np
    from PIL import Image

    from pvdm.data.store import ClipStore
    from pvdm.report.figures import strip_image

    img = strip_image(np.asarray(ClipStore(clips_dir).clips[:n]), n, every)
    im = Image.fromarray(img)
    im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    out.parent.mkdir(parents=True, exist_ok=True)
    im.save(out)
    return out


def cmd_dm(args: argparse.Namespace) -> None:
    import shutil

    import torch

    from pvdm.checkpoints import load_autoencoder, save_diffusion
    from pvdm.diffusion.samplers import Sampler
    from pvdm.models.unet import TriplaneUNet
    from pvdm.sample import generate
    from pvdm.train.diffusion import train_diffusion, unet_config

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    at = [int(a) for a in args.at.split(",")]
    exp = load_exp([*args.overrides, f"diffusion.train.steps={at[-1] + 1 if args.schedule else 10**6}"])
    tcfg = exp["diffusion"]["train"]
    tcfg["save_every"] = 10**9
    install_schedule(args.schedule, at[-1])
    data = SCRATCH / "data" / args.data
    ae_path = Path(args.ae)
    out = SCRATCH / "dm" / args.name
    out.mkdir(parents=True, exist_ok=True)
    ae = load_autoencoder(ae_path)
    cfg = unet_config(exp["diffusion"]["model"], ae)
    (out / "unet_config.json").write_text(json.dumps(cfg.to_dict()))
    s = exp["sampling"]
    frames = ae.cfg.frames
    # the latent cache (encoded once) and the model build: max_steps=0
    t0 = cpu()
    train_diffusion(exp, data, ae_path, out, "cpu", max_steps=0)
    setup_cpu = cpu() - t0
    points = [0, *at] if args.untrained else at
    train_cpu = 0.0
    for k in points:
        if k > 0:
            t0 = cpu()
            train_diffusion(exp, data, ae_path, out, "cpu", max_steps=k)
            train_cpu += cpu() - t0
            ck = save_unet_from_state(out / "state.pt", out, str(k))
            log_rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if x]
            losses = [r["loss"] for r in log_rows if "loss" in r and r.get("step", 0) <= k]
            recent = losses[-max(1, len(losses) // 5):]
            loss = sum(recent) / len(recent)
            which = [("ema", ck["ema"])] + ([("raw", ck["model"])] if args.raw else [])
        else:
            torch.manual_seed(exp.get("seed", 0))
            p = out / "untrained.pt"
            save_diffusion(TriplaneUNet(cfg), p)
            which, loss = [("untrained", p)], None
        for kind, ckpt in which:
            sdir = out / f"samples_{kind}_{k}"
            if sdir.exists():
                shutil.rmtree(sdir)
            t1 = cpu()
            do_fvd = args.fvd_n and (not args.fvd_at or k in [int(a) for a in args.fvd_at.split(",")])
            n_samples = max(args.sample_n, args.fvd_n) if do_fvd else args.sample_n
            sampler = Sampler.from_config({**s["sampler"], **({"steps": args.sampler_steps} if args.sampler_steps else {})})
            generate(ae_path, ckpt, sdir, num_videos=n_samples, frames=frames, sampler=sampler, seed=s["seed"],
                     batch_size=s["batch_size"], device="cpu", weights=kind)
            sample_cpu = cpu() - t1
            png = strip_png(sdir / "clips", HERE / "img" / f"dm_{args.name}_{kind}_{k}.png")
            row = {"run": args.name, "step": k, "kind": kind, "train_cpu_s": round(train_cpu, 1),
                   "setup_cpu_s": round(setup_cpu, 1), "loss_recent": loss,
                   "sample_n": n_samples, "sampler_steps": sampler.steps,
                   "sample_cpu_s": round(sample_cpu, 1), "png": str(png.relative_to(HERE)),
                   "ae": str(ae_path), "data": args.data, "overrides": args.overrides,
                   "schedule": args.schedule}
            if args.fvd_n and (not args.fvd_at or k in [int(a) for a in args.fvd_at.split(",")]):
                real_f = real_features(data, max(128, args.fvd_n))
                fake_f, i3d_cpu = fake_features(sdir / "clips", args.fvd_n)
                row["i3d_fake_cpu_s"] = round(i3d_cpu, 1)
                row.update(fvd_numbers(real_f, fake_f))
                if args.fvd_n > 64:
                    row["at64"] = fvd_numbers(real_f, fake_f[:64])
            append(args.log, row)
            print(json.dumps(row), flush=True)
            if not args.keep_samples:
                shutil.rmtree(sdir / "clips", ignore_errors=True)


def cmd_resample(args: argparse.Namespace) -> None:
    """Sample an existing U-Net checkpoint with other sampler settings; FVD16 at N (and at 64)."""
    import shutil

    import torch

    from pvdm.diffusion.samplers import Sampler
    from pvdm.sample import generate

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data = SCRATCH / "data" / args.data
    sdir = SCRATCH / "resample" / f"{args.name}"
    if sdir.exists():
        shutil.rmtree(sdir)
    t0 = cpu()
    generate(args.ae, args.unet, sdir, num_videos=args.n, frames=16, seed=0, batch_size=32,
             sampler=Sampler("ddim", args.steps, args.eta), device="cpu",
             weights="untrained" if args.untrained else "ema")
    sample_cpu = cpu() - t0
    png = strip_png(sdir / "clips", HERE / "img" / f"resample_{args.name}.png")
    real_f = real_features(data, max(128, args.n))
    fake_f, i3d_cpu = fake_features(sdir / "clips", args.n)
    row = {"run": args.name, "unet": args.unet, "ae": args.ae, "sampler_steps": args.steps, "eta": args.eta,
           "sample_n": args.n, "sample_cpu_s": round(sample_cpu, 1), "i3d_fake_cpu_s": round(i3d_cpu, 1),
           "png": str(png.relative_to(HERE)), **fvd_numbers(real_f, fake_f)}
    if args.n > 64:
        row["at64"] = fvd_numbers(real_f, fake_f[:64])
    append(args.log, row)
    print(json.dumps(row), flush=True)
    if not args.keep_samples:
        shutil.rmtree(sdir / "clips", ignore_errors=True)


def cmd_fvd(args: argparse.Namespace) -> None:
    row = {"real": args.real, "fake": args.fake, **fvd16(Path(args.real), Path(args.fake), args.n)}
    append(args.log, row)
    print(json.dumps(row))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(required=True)

    s = sub.add_parser("data")
    s.add_argument("name")
    s.add_argument("overrides", nargs="*")
    s.set_defaults(func=cmd_data)

    s = sub.add_parser("ae")
    s.add_argument("name")
    s.add_argument("--data", required=True)
    s.add_argument("--at", required=True, help="comma-separated steps at which to evaluate")
    s.add_argument("--stage", default="stage1")
    s.add_argument("--init", default=None)
    s.add_argument("--schedule", default=None)
    s.add_argument("--eval-videos", type=int, default=32)
    s.add_argument("--no-early-stop", action="store_true")
    s.add_argument("--log", default="ae")
    s.add_argument("overrides", nargs="*")
    s.set_defaults(func=cmd_ae)

    s = sub.add_parser("dm")
    s.add_argument("name")
    s.add_argument("--data", required=True)
    s.add_argument("--ae", required=True, help="autoencoder checkpoint")
    s.add_argument("--at", required=True)
    s.add_argument("--schedule", default=None)
    s.add_argument("--sample-n", type=int, default=16)
    s.add_argument("--sampler-steps", type=int, default=None)
    s.add_argument("--fvd-n", type=int, default=0)
    s.add_argument("--fvd-at", default=None, help="steps at which to compute FVD (default: every point)")
    s.add_argument("--raw", action="store_true", help="also sample the raw (non-EMA) weights")
    s.add_argument("--untrained", action="store_true", help="also sample the untrained U-Net")
    s.add_argument("--keep-samples", action="store_true")
    s.add_argument("--log", default="dm")
    s.set_defaults(func=cmd_dm, overrides=[])

    s = sub.add_parser("resample")
    s.add_argument("name")
    s.add_argument("--data", required=True)
    s.add_argument("--ae", required=True)
    s.add_argument("--unet", required=True)
    s.add_argument("--steps", type=int, default=50)
    s.add_argument("--eta", type=float, default=1.0)
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--untrained", action="store_true")
    s.add_argument("--keep-samples", action="store_true")
    s.add_argument("--log", default="resample")
    s.set_defaults(func=cmd_resample, overrides=[])

    s = sub.add_parser("fvd")
    s.add_argument("--real", required=True)
    s.add_argument("--fake", required=True)
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--log", default="fvd")
    s.set_defaults(func=cmd_fvd, overrides=[])

    s = sub.add_parser("grid")
    s.add_argument("ckpt")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=4)
    s.add_argument("--every", type=int, default=2)
    s.add_argument("--scale", type=int, default=2)
    s.set_defaults(func=cmd_grid)

    args, extra = p.parse_known_args()
    bad = [e for e in extra if "=" not in e or e.startswith("-")]
    if bad:
        p.error(f"unrecognized arguments: {bad}")
    args.overrides = [*getattr(args, "overrides", []), *extra]
    args.func(args)


if __name__ == "__main__":
    main()
