"""`pvdm sample` and `pvdm gather-samples`: the sampling stage's commands (pvdm/sample.py)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pvdm.cli_options import Command, opt, positive_int, register_commands, resolve_experiment, shared

log = logging.getLogger("pvdm")


def register(sub: argparse._SubParsersAction) -> None:
    register_commands(sub, [
        Command("sample", "generate 16-frame clips or long videos into a clip store (+ mp4/gif previews)",
                SAMPLE_OPTIONS, run_sample, experiment=True),
        Command("gather-samples", "put the shards of a sample set together: clip store, previews, samples.json",
                [opt("--shards", required=True, type=positive_int, help="N, the number of shards"),
                 shared("out", "the sample set's folder (the --out of the shard jobs)")],
                run_gather),
    ])


SAMPLE_OPTIONS = [
    shared("autoencoder"), shared("out"), shared("device"),
    opt("--diffusion", required=True, type=Path, help="U-Net checkpoint (ema.pt, model.pt, ...)"),
    opt("--frames", required=True, type=positive_int, help="frames per video (16 = clips, 128 = long videos)"),
    opt("--num-videos", type=positive_int, help="overrides sampling.num_videos"),
    opt("--weights", choices=["ema", "raw", "untrained"],
        help="which weights --diffusion holds, for the sampler card (default: ema if sampling.ema, else raw)"),
    opt("--shard", help="KofN: draw only the K-th of N contiguous ranges of the samples into OUT/shards/KofN.npy "
        "(`pvdm gather-samples` puts the N shards together); default: the whole set, gathered at once"),
]


def run_sample(args: argparse.Namespace) -> None:
    """Sample triplane latents with the U-Net (sampling.sampler: DDIM with eta, or ancestral DDPM) and decode
    them. --frames equal to the autoencoder's clip length gives clips; a multiple of it gives long videos,
    each clip conditioned on the previous generated clean latent. Sample i uses its own seed (sampling.seed
    and i, see pvdm.utils.seeding), whatever the batch size. Writes OUT/clips (clip store),
    OUT/preview.{mp4,gif}, OUT/samples.json. A killed run resumes from its finished shards."""
    from pvdm.config import validate
    from pvdm.dag import ExperimentDag, parse_shard
    from pvdm.diffusion.samplers import Sampler
    from pvdm.sample import generate, sample_shard

    _, exp = resolve_experiment(args)
    s = validate(dict(exp.get("sampling", {})), "sampling", definition="sampling")
    settings = dict(
        num_videos=args.num_videos or s["num_videos"], frames=args.frames, sampler=Sampler.from_config(s["sampler"]),
        seed=s["seed"], batch_size=s["batch_size"], amp=s["amp"], device=args.device,
        weights=args.weights or ExperimentDag("cli", {**exp, "sampling": s}).weights_label("model"),
    )
    if args.shard is None:  # the whole set in this process
        generate(args.autoencoder, args.diffusion, args.out, **settings)
        return
    shard, shards = parse_shard(args.shard)
    log.info("wrote %s", sample_shard(args.autoencoder, args.diffusion, args.out, shard=shard, shards=shards,
                                      **settings))


def run_gather(args: argparse.Namespace) -> None:
    """Read OUT/shards/KofN.npy (K = 0..N-1, written by `pvdm sample --shard`), check that they were made with
    the same settings and cover every sample once, and write OUT/clips (clip store), OUT/preview.{mp4,gif}
    and OUT/samples.json. The result is the same as one `pvdm sample` job."""
    from pvdm.sample import gather_samples

    gather_samples(args.out, args.shards)
