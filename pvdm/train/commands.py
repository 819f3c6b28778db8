"""`pvdm train-autoencoder`, `pvdm finetune-gan`, `pvdm train-diffusion`, and `pvdm import-pvdm` (the
released checkpoints, which replace the training stages)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pvdm.cli_options import Command, opt, register_commands, resolve_experiment, shared

log = logging.getLogger("pvdm")

TRAINING_OPTIONS = [shared("data"), shared("out"), shared("device"), shared("max_steps")]


def register(sub: argparse._SubParsersAction) -> None:
    register_commands(sub, [
        Command("train-autoencoder", "stage 1: train the triplane autoencoder with L1 + LPIPS", TRAINING_OPTIONS,
                run_stage, experiment=True, defaults={"stage": "stage1"}),
        Command("finetune-gan", "stage 2: GAN fine-tuning with automatic early stopping",
                [*TRAINING_OPTIONS,
                 opt("--init", required=True, type=Path, help="stage-1 checkpoint (model.pt) or an original .pth")],
                run_gan, experiment=True, defaults={"stage": "gan"}),
        Command("train-diffusion", "train the latent diffusion U-Net (joint unconditional / clip-conditional)",
                [*TRAINING_OPTIONS, shared("autoencoder", "autoencoder checkpoint (frozen)")], run_diffusion,
                experiment=True),
        Command("import-pvdm", "convert the released PVDM checkpoints (original .pth) into this project's format",
                [shared("autoencoder", "original autoencoder .pth"),
                 opt("--diffusion", required=True, type=Path, help="original diffusion .pth (EMA or raw)"),
                 opt("--autoencoder-config", help="JSON AutoencoderConfig for non-paper checkpoints"),
                 opt("--diffusion-config", help="JSON UNetConfig (without plane sizes) for non-paper checkpoints"),
                 shared("out")],
                run_import),
    ])


def run_stage(args: argparse.Namespace) -> None:
    """Train the triplane video autoencoder (autoencoder.model) on DATA/train with autoencoder.stage1
    settings. Writes OUT/model.pt, metrics.json (held-out PSNR/SSIM/LPIPS of the untrained and the trained
    model), log.jsonl, tensorboard/ and recon_grid.{mp4,gif}. The complete training state is saved
    atomically to OUT/state.pt every `save_every` steps; rerunning the same command resumes from it when it
    is the same computation (settings, inputs' content, numerics); otherwise it is set aside as
    state.stale.pt and training starts over."""
    from pvdm.train.autoencoder import train_autoencoder

    _, exp = resolve_experiment(args)
    if "autoencoder" not in exp or args.stage not in exp["autoencoder"]:
        raise ValueError(f"the experiment has no autoencoder.{args.stage} section")
    train_autoencoder(
        exp, args.data, args.out, args.stage, getattr(args, "init", None), args.device, args.max_steps
    )


def run_gan(args: argparse.Namespace) -> None:
    """Fine-tune a stage-1 autoencoder (--init) with 2-D and 3-D PatchGAN discriminators (hinge + feature
    matching). Every `eval_every` steps the held-out split is evaluated; the best model by `monitor` is kept
    as OUT/best.pt (and OUT/model.pt at the end); training stops after `patience` evaluations without
    improvement or on divergence (non-finite loss, loss spike). OUT/history.json records every evaluation
    and why training stopped. Resumes from OUT/state.pt as train-autoencoder does."""
    run_stage(args)


def run_diffusion(args: argparse.Namespace) -> None:
    """Train the triplane U-Net (diffusion.model) on latents of the frozen autoencoder (--autoencoder) with
    diffusion.train settings: epsilon-MSE on the original's linear schedule (T = 1000), joint unconditional
    / conditional batches (cond_prob), EMA. Writes OUT/model.pt, ema.pt, untrained.pt (the initialisation, a
    baseline), metrics.json, log.jsonl, tensorboard/. Resumes from OUT/state.pt as train-autoencoder does."""
    from pvdm.train.diffusion import train_diffusion

    _, exp = resolve_experiment(args)
    if "diffusion" not in exp:
        raise ValueError("the experiment has no diffusion section")
    train_diffusion(exp, args.data, args.autoencoder, args.out, args.device, args.max_steps)


def run_import(args: argparse.Namespace) -> None:
    """Load the original PVDM autoencoder and diffusion files (bare state dicts, with or without a 'module.'
    prefix; read with weights_only=True) and write OUT/autoencoder.pt, OUT/diffusion.pt and OUT/import.json
    (sources and sha256). The released files are the paper configs and are recognised from their shapes;
    other original-format files need --autoencoder-config / --diffusion-config."""
    import json

    from pvdm.checkpoints import import_pvdm

    configs = [json.loads(c) if c else None for c in (args.autoencoder_config, args.diffusion_config)]
    import_pvdm(args.autoencoder, args.diffusion, args.out, *configs)
