"""Latent diffusion training on frozen triplane latents: joint unconditional / conditional.

Each iteration draws one u ~ U(0, 1) for the batch (as the original): if u < cond_prob, the
condition is the latent of the first half of each 2T-frame clip and the target the second half;
otherwise a random T-frame window is the target and the condition is all zeros (the "dropped"
condition the sampler uses for the first clip of a video). Randomness of step k comes from a
generator seeded by (seed, k), data from ``ClipBatches.get(k)``: a resumed run reproduces an
uninterrupted one exactly. Evaluation (sampling, FVD) is a separate stage, never run in here.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from pvdm.checkpoints import load_autoencoder, save_diffusion
from pvdm.data.loader import ClipBatches, to_model_range
from pvdm.data.store import ClipStore
from pvdm.diffusion.schedule import NoiseSchedule, training_loss
from pvdm.models.autoencoder import TriplaneAutoencoder
from pvdm.models.unet import TriplaneUNet, UNetConfig
from pvdm.train import distributed
from pvdm.train.ema import EMA
from pvdm.train.loop import TrainingRun
from pvdm.utils.io import atomic_save_npy, atomic_write_json, read_json, sha256_file
from pvdm.utils.progress import Progress

log = logging.getLogger("pvdm.train")


def unet_config(model: dict[str, Any], ae: TriplaneAutoencoder) -> UNetConfig:
    """The U-Net config with the plane sizes and channels of the autoencoder (never hard-coded)."""
    cfg = ae.cfg
    return UNetConfig.from_dict(
        {**model, "in_channels": cfg.embed_dim, "latent_side": cfg.latent_side, "latent_frames": cfg.frames}
    )


class LatentCache:
    """Latents of fixed windows of every stored clip, encoded once (``cache_latents: true``).

    Windows start at multiples of ``stride`` (stride = T gives exactly the two halves). Stored as
    float32 shards ``[n, W, C, L]`` of ``SHARD`` clips each in ``folder/shard_<k>.npy``, beside
    ``folder/meta.json`` (the autoencoder's sha256, the store's fingerprint, its size, the offsets): a
    different autoencoder or store content never reuses them. Under torchrun every rank encodes every world-size-th
    shard, so no rank waits at a barrier while another encodes the whole set; a killed build
    resumes from the shards already written.
    """

    SHARD = 256

    def __init__(self, folder: Path, ae: TriplaneAutoencoder, ae_sha: str, store: ClipStore, store_sha: str,
                 stride: int, d: distributed.Dist, batch_size: int = 16):
        t = ae.cfg.frames
        self.offsets = list(range(0, store.frames - t + 1, stride))
        meta = {"autoencoder_sha256": ae_sha, "store_sha256": store_sha, "clips": len(store),
                "offsets": self.offsets, "shard_clips": self.SHARD}
        meta_path = folder / "meta.json"
        if d.is_main:
            if folder.exists() and (not meta_path.exists() or read_json(meta_path) != meta):
                log.info("%s belongs to another autoencoder or store: encoding again", folder)
                shutil.rmtree(folder)
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(meta_path, meta)
        distributed.barrier(d)
        n_shards = -(-len(store) // self.SHARD)
        paths = [folder / f"shard_{k:05d}.npy" for k in range(n_shards)]
        mine = [k for k in range(d.rank, n_shards, d.world_size) if not paths[k].exists()]
        if mine:
            log.info("encoding %d of %d latent-cache shards (%d clips x %d windows) into %s",
                     len(mine), n_shards, len(store), len(self.offsets), folder)
        with Progress(len(mine), "latent cache shards") as bar:
            for k in mine:
                lo, hi = k * self.SHARD, min((k + 1) * self.SHARD, len(store))
                out = np.empty((hi - lo, len(self.offsets), ae.cfg.embed_dim, ae.cfg.latent_length), np.float32)
                for start in range(lo, hi, batch_size):
                    stop = min(start + batch_size, hi)
                    x = to_model_range(torch.from_numpy(np.array(store.clips[start:stop])).to(d.device))  # b c T h w
                    for j, o in enumerate(self.offsets):
                        with torch.no_grad():
                            out[start - lo : stop - lo, j] = ae.encode(x[:, :, o : o + t]).float().cpu().numpy()
                atomic_save_npy(paths[k], out)
                bar.update(1)
        distributed.barrier(d)
        self.shards = [np.load(p, mmap_mode="r") for p in paths]

    def window(self, clip: int, w: int) -> np.ndarray:
        """Latent ``# c l`` of window ``w`` of clip ``clip``."""
        return self.shards[clip // self.SHARD][clip % self.SHARD, w]


def train_diffusion(
    exp: dict[str, Any],
    data_dir: str | Path,
    autoencoder: str | Path,
    out_dir: str | Path,
    device: str | None = None,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Train the latent U-Net; writes state.pt (resumable), model.pt, ema.pt, metrics.json, log.jsonl."""
    dcfg, out_dir = exp["diffusion"], Path(out_dir)
    tcfg = dcfg["train"]
    store = ClipStore(Path(data_dir) / "train")
    # Inputs are checked before the run takes the folder's lock or writes anything. (Loaded again in
    # the run, after seeding, as before: building a model draws from the global RNG the U-Net's
    # initialisation uses, and the trained numbers stay those of earlier runs.)
    check_inputs(store, load_autoencoder(autoencoder, map_location="cpu"), tcfg)
    ae_sha, store_sha = sha256_file(autoencoder), store.fingerprint()
    # The run's identity: settings and the content of every input (not their paths).
    run_cfg = {"seed": exp["seed"], "diffusion": dcfg, "train_store": store_sha, "autoencoder_sha256": ae_sha}
    with TrainingRun(
        out_dir, run_cfg, seed=exp["seed"], steps=tcfg["steps"], save_every=tcfg["save_every"],
        log_every=tcfg["log_every"], max_steps=max_steps, device=device, amp=tcfg["amp"], desc="diffusion",
    ) as run:
        run.check_batch(tcfg["batch_size"], "diffusion.train.batch_size")
        ae = load_autoencoder(autoencoder, map_location="cpu").to(run.device).eval().requires_grad_(False)
        cfg = unet_config(dcfg["model"], ae)
        if tcfg["cond_prob"] > 0 and not cfg.cond:
            raise ValueError("diffusion.train.cond_prob > 0 needs a conditional U-Net (diffusion.model.cond: true)")
        model = TriplaneUNet(cfg).to(run.device)
        # The initialisation, kept for untrained.pt (the baseline): a resumed run rebuilds the same one.
        initial = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        ema = EMA(model, tcfg["ema_decay"], tcfg["ema_every"])
        opt = torch.optim.AdamW(model.parameters(), lr=tcfg["lr"], weight_decay=tcfg["weight_decay"])
        scaler = run.precision.scaler()  # fp16 gradients underflow without loss scaling; a no-op otherwise
        run.register(model=model, opt=opt, ema=ema, scaler=scaler)
        run.resume()
        ddp_model = model
        if run.dist.enabled:
            ddp_model = DDP(model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
        schedule = NoiseSchedule()
        cache = None
        if tcfg["cache_latents"]:
            cache = LatentCache(out_dir / "latents", ae, ae_sha, store, store_sha, tcfg["cache_stride"], run.dist)
        source = LatentBatches(store, ae, cache, tcfg, exp["seed"], run)
        model.train()
        for step in run.steps():
            z, c = source.get(step, run.generator(step, 1))
            conditional = c is not None
            if c is None and cfg.cond:
                c = torch.zeros_like(z)  # the dropped condition
            loss = unet_update(ddp_model, model, opt, scaler, z, c, run.generator(step, 2), source.local, schedule,
                               cfg, tcfg, run)
            done = step + 1
            ema.update(model, done)
            value = distributed.mean_across_ranks({"loss": loss.item()}, run.dist)["loss"]  # NaN anywhere: NaN everywhere
            if not np.isfinite(value):
                raise FloatingPointError(
                    f"diffusion loss is {value} at step {done}; the last good state is {run.state_path}"
                )
            run.log(done, {"loss": value, "conditional": int(conditional)}, progress=value)
            run.checkpoint(done)
        if not run.completed:
            return {"step": run.done, "stopped": "max_steps"}
        if not run.dist.is_main:
            return {}
        return finish(model, ema, cfg, initial, out_dir, run, ae_sha)


class LatentBatches:
    """The latents of training step k for this rank: (target, condition or None = dropped) ``# b c l``,
    from the latent cache or encoded on the fly; which clips, halves and windows depends on k only."""

    def __init__(self, store: ClipStore, ae: TriplaneAutoencoder, cache: LatentCache | None, tcfg: dict[str, Any],
                 seed: int, run: TrainingRun):
        self.ae, self.cache, self.tcfg, self.run, self.t = ae, cache, tcfg, run, ae.cfg.frames
        self.batches = ClipBatches(store, tcfg["batch_size"], store.frames, seed, run.dist.rank, run.dist.world_size)
        self.local = self.batches.local_slice  # this rank's rows of the global batch

    def get(self, step: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        conditional = torch.rand((), generator=gen).item() < self.tcfg["cond_prob"]
        if self.cache is not None:
            return self._cached(step, gen, conditional)
        t, device = self.t, self.run.device
        x = to_model_range(self.batches.get(step).to(device, non_blocking=True))  # b c T h w
        with torch.no_grad(), self.run.autocast():
            if conditional:
                return self.ae.encode(x[:, :, t : 2 * t]).float(), self.ae.encode(x[:, :, :t]).float()
            s = int(torch.randint(0, x.shape[2] - t + 1, (), generator=gen))
            return self.ae.encode(x[:, :, s : s + t]).float(), None

    def _cached(self, step: int, gen: torch.Generator, conditional: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        cache, device = self.cache, self.run.device
        idx, _ = self.batches.indices(step)
        offsets = cache.offsets
        if conditional:
            first, second = offsets.index(0), offsets.index(self.t)
            z = torch.from_numpy(np.stack([cache.window(i, second) for i in idx])).to(device)
            c = torch.from_numpy(np.stack([cache.window(i, first) for i in idx])).to(device)
            return z, c
        w = torch.randint(0, len(offsets), (self.tcfg["batch_size"],), generator=gen)[self.local]
        z = torch.from_numpy(np.stack([cache.window(i, j) for i, j in zip(idx, w.tolist(), strict=True)]))
        return z.to(device), None


def unet_update(ddp_model: torch.nn.Module, model: TriplaneUNet, opt: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, z: torch.Tensor, c: torch.Tensor | None, noise_gen: torch.Generator, local: slice, schedule: NoiseSchedule,
                cfg: UNetConfig, tcfg: dict[str, Any], run: TrainingRun) -> torch.Tensor:
    """One optimiser step of the U-Net on latents ``z`` (condition ``c``); the loss of this rank."""
    # Diffusion time and noise of the whole global batch, then this rank's rows: the same numbers
    # whatever the number of ranks.
    batch = tcfg["batch_size"]
    tt = torch.randint(0, schedule.num_timesteps, (batch,), generator=noise_gen)[local].to(run.device)
    noise = torch.randn((batch, *z.shape[1:]), generator=noise_gen)[local].to(run.device)
    with run.autocast():
        loss = training_loss(ddp_model, z, t=tt, noise=noise, cond=c, loss_type=tcfg["loss"], schedule=schedule,
                             prediction=cfg.prediction, min_snr_gamma=tcfg["min_snr_gamma"])
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if tcfg["grad_clip"]:
        scaler.unscale_(opt)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg["grad_clip"])
    scaler.step(opt)
    scaler.update()
    return loss


def check_inputs(store: ClipStore, ae: TriplaneAutoencoder, tcfg: dict[str, Any]) -> None:
    t = ae.cfg.frames
    if store.resolution != ae.cfg.resolution:
        raise ValueError(f"{store.path}: {store.resolution}px clips, the autoencoder expects {ae.cfg.resolution}px")
    if store.frames < 2 * t and tcfg["cond_prob"] > 0:
        raise ValueError(
            f"{store.path}: conditional training needs clips of {2 * t} frames (condition + target), "
            f"the store has {store.frames}; set data.clip_frames >= {2 * t} or cond_prob: 0"
        )


def finish(model: TriplaneUNet, ema: EMA, cfg: UNetConfig, initial: dict[str, torch.Tensor], out_dir: Path,
           run: TrainingRun, ae_sha: str) -> dict[str, Any]:
    """model.pt, ema.pt, untrained.pt (the initialisation: the baseline to beat) and metrics.json."""
    save_diffusion(model, out_dir / "model.pt")
    save_diffusion(ema.model, out_dir / "ema.pt")
    untrained = TriplaneUNet(cfg)
    untrained.load_state_dict(initial)
    save_diffusion(untrained, out_dir / "untrained.pt")
    rows = read_jsonl(out_dir / "log.jsonl")
    metrics = {
        "steps": run.done,
        "final_loss": rows[-1]["loss"] if rows else None,
        "first_loss": rows[0]["loss"] if rows else None,
        "ema_updates": ema.num_updates,
        "parameters": sum(p.numel() for p in model.parameters()),
        "unet": cfg.to_dict(),
        "autoencoder_sha256": ae_sha,
    }
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]
