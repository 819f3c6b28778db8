"""`pvdm train-autoencoder` and `pvdm finetune-gan`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pvdm.cli_options import add_experiment_args, add_options, positive_int, resolve_experiment

log = logging.getLogger("pvdm")

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
    register_diffusion(sub)


def _common(p: argparse.ArgumentParser) -> None:
    add_experiment_args(p)
    add_options(p, "data", "out", "device", "max_steps")


def run_stage(args: argparse.Namespace) -> None:
    from pvdm.train.autoencoder import train_autoencoder

    _, exp = resolve_experiment(args)
    if "autoencoder" not in exp or args.stage not in exp["autoencoder"]:
        raise ValueError(f"the experiment has no autoencoder.{args.stage} section")
    train_autoencoder(
        exp, args.data, args.out, args.stage, getattr(args, "init", None), args.device, args.max_steps
    )


def register_diffusion(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-diffusion",
        help="train the latent diffusion U-Net (joint unconditional / clip-conditional)",
        description="Train the triplane U-Net (diffusion.model) on latents of the frozen autoencoder "
        "(--autoencoder) with diffusion.train settings: epsilon-MSE on the original's linear schedule "
        "(T = 1000), joint unconditional / conditional batches (cond_prob), EMA. Writes OUT/model.pt, "
        "ema.pt, untrained.pt (the initialisation, a baseline), metrics.json, log.jsonl, tensorboard/. "
        + RESUME_NOTE,
    )
    add_experiment_args(p)
    add_options(p, "data", "out", "device", "max_steps", autoencoder="autoencoder checkpoint (frozen)")
    p.set_defaults(func=run_diffusion)

    p = sub.add_parser(
        "sample",
        help="generate 16-frame clips or long videos into a clip store (+ mp4/gif previews)",
        description="Sample triplane latents with the U-Net (sampling.sampler: DDIM with eta, or ancestral DDPM) "
        "and decode them. --frames equal to the autoencoder's clip length gives clips; a multiple of it gives "
        "long videos, each clip conditioned on the previous generated clean latent. Sample i uses its own seed "
        "(sampling.seed and i, see pvdm.utils.seeding), whatever the batch size. Writes OUT/clips (clip store), "
        "OUT/preview.{mp4,gif}, OUT/samples.json. A killed run resumes from its finished shards.",
    )
    add_experiment_args(p)
    add_options(p, "autoencoder", "out", "device")
    p.add_argument("--diffusion", required=True, type=Path, help="U-Net checkpoint (ema.pt, model.pt, ...)")
    p.add_argument(
        "--frames", required=True, type=positive_int, help="frames per video (16 = clips, 128 = long videos)"
    )
    p.add_argument("--num-videos", type=positive_int, help="overrides sampling.num_videos")
    p.add_argument(
        "--weights",
        choices=["ema", "raw", "untrained"],
        help="which weights --diffusion holds, for the sampler card (default: ema if sampling.ema, else raw)",
    )
    p.add_argument(
        "--shard",
        help="KofN: draw only the K-th of N contiguous ranges of the samples into OUT/shards/KofN.npy "
        "(`pvdm gather-samples` puts the N shards together); default: the whole set, gathered at once",
    )
    p.set_defaults(func=run_sample)

    p = sub.add_parser(
        "gather-samples",
        help="put the shards of a sample set together: clip store, previews, samples.json",
        description="Read OUT/shards/KofN.npy (K = 0..N-1, written by `pvdm sample --shard`), check that they "
        "were made with the same settings and cover every sample once, and write OUT/clips (clip store), "
        "OUT/preview.{mp4,gif} and OUT/samples.json. The result is the same as one `pvdm sample` job.",
    )
    p.add_argument("--shards", required=True, type=positive_int, help="N, the number of shards")
    add_options(p, out="the sample set's folder (the --out of the shard jobs)")
    p.set_defaults(func=run_gather)

    p = sub.add_parser(
        "import-pvdm",
        help="convert the released PVDM checkpoints (original .pth) into this project's format",
        description="Load the original PVDM autoencoder and diffusion files (bare state dicts, with or without "
        "a 'module.' prefix; read with weights_only=True) and write OUT/autoencoder.pt, OUT/diffusion.pt and "
        "OUT/import.json (sources and sha256). The released files are the paper configs and are recognised "
        "from their shapes; other original-format files need --autoencoder-config / --diffusion-config.",
    )
    add_options(p, autoencoder="original autoencoder .pth")
    p.add_argument("--diffusion", required=True, type=Path, help="original diffusion .pth (EMA or raw)")
    p.add_argument("--autoencoder-config", help="JSON AutoencoderConfig for non-paper checkpoints")
    p.add_argument(
        "--diffusion-config", help="JSON UNetConfig (without plane sizes) for non-paper checkpoints"
    )
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=run_import)


def run_diffusion(args: argparse.Namespace) -> None:
    from pvdm.train.diffusion import train_diffusion

    _, exp = resolve_experiment(args)
    if "diffusion" not in exp:
        raise ValueError("the experiment has no diffusion section")
    train_diffusion(exp, args.data, args.autoencoder, args.out, args.device, args.max_steps)


def run_sample(args: argparse.Namespace) -> None:
    from pvdm.config import validate
    from pvdm.diffusion.samplers import Sampler
    from pvdm.plan import ExperimentPlan, parse_shard
    from pvdm.sample import generate, sample_shard

    _, exp = resolve_experiment(args)
    s = validate(dict(exp.get("sampling", {})), "sampling", definition="sampling")
    settings = dict(
        num_videos=args.num_videos or s["num_videos"], frames=args.frames, sampler=Sampler.from_config(s["sampler"]),
        seed=s["seed"], batch_size=s["batch_size"], amp=s["amp"], device=args.device,
        weights=args.weights or ExperimentPlan("cli", {**exp, "sampling": s}).weights_label("model"),
    )
    if args.shard is None:  # the whole set in this process
        generate(args.autoencoder, args.diffusion, args.out, **settings)
        return
    shard, shards = parse_shard(args.shard)
    log.info("wrote %s", sample_shard(args.autoencoder, args.diffusion, args.out, shard=shard, shards=shards,
                                      **settings))


def run_gather(args: argparse.Namespace) -> None:
    from pvdm.sample import gather_samples

    gather_samples(args.out, args.shards)


def run_import(args: argparse.Namespace) -> None:
    import json

    from pvdm.checkpoints import import_pvdm

    configs = [json.loads(c) if c else None for c in (args.autoencoder_config, args.diffusion_config)]
    import_pvdm(args.autoencoder, args.diffusion, args.out, *configs)
