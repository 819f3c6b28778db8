"""`pvdm train-autoencoder` and `pvdm finetune-gan`."""

from __future__ import annotations

import argparse
from pathlib import Path

from pvdm.data.commands import add_experiment_args, resolve_experiment

RESUME_NOTE = (
    "The complete training state is saved atomically to OUT/state.pt every `save_every` steps; "
    "rerunning the same command resumes from it (a changed config starts over)."
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-autoencoder",
        help="stage 1: train the triplane autoencoder with L1 + LPIPS",
        description="Train the triplane video autoencoder (autoencoder.model) on DATA/train with "
        "autoencoder.stage1 settings. Writes OUT/model.pt, metrics.json (held-out PSNR/SSIM/LPIPS of the "
        "untrained and the trained model), log.jsonl, tensorboard/ and recon_grid.{mp4,gif}. " + RESUME_NOTE,
    )
    _common(p)
    p.set_defaults(func=run_stage, stage="stage1")

    p = sub.add_parser(
        "finetune-gan",
        help="stage 2: GAN fine-tuning with automatic early stopping",
        description="Fine-tune a stage-1 autoencoder (--init) with 2-D and 3-D PatchGAN discriminators "
        "(hinge + feature matching). Every `eval_every` steps the held-out split is evaluated; the best "
        "model by `monitor` is kept as OUT/best.pt (and OUT/model.pt at the end); training stops after "
        "`patience` evaluations without improvement or on divergence (non-finite loss, loss spike). "
        "OUT/history.json records every evaluation and why training stopped. " + RESUME_NOTE,
    )
    _common(p)
    p.add_argument(
        "--init", required=True, type=Path, help="stage-1 checkpoint (model.pt) or an original .pth"
    )
    p.set_defaults(func=run_stage, stage="gan")


def _common(p: argparse.ArgumentParser) -> None:
    add_experiment_args(p)
    p.add_argument("--data", required=True, type=Path, help="the data stage's folder (results/<exp>/data)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: this rank's GPU if any, else cpu)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (the state stays resumable)")


def run_stage(args: argparse.Namespace) -> None:
    from pvdm.train.autoencoder import train_autoencoder

    _, exp = resolve_experiment(args)
    if "autoencoder" not in exp or args.stage not in exp["autoencoder"]:
        raise ValueError(f"the experiment has no autoencoder.{args.stage} section")
    train_autoencoder(
        exp, args.data, args.out, args.stage, getattr(args, "init", None), args.device, args.max_steps
    )
