"""Autoencoder training: stage 1 (L1 + LPIPS) and GAN fine-tuning with automatic early stopping.

One iteration = one generator update over ``grad_accum`` micro-batches, then (GAN stage) one
discriminator update over the next ``grad_accum`` micro-batches, as the original alternates its
G and D phases. Micro-batch ``m`` of the run is always the same data (``ClipBatches.get(m)``) and
the random LPIPS frame of step ``k`` comes from the step's generator, so a killed and resumed run
computes exactly what an uninterrupted one does (the skeleton is ``pvdm.train.loop``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from pvdm.checkpoints import load_autoencoder, save_autoencoder
from pvdm.data.loader import ClipBatches, to_model_range
from pvdm.data.store import ClipStore
from pvdm.eval.reconstruction import recon_metrics, reconstruct
from pvdm.losses.gan import AutoencoderLoss
from pvdm.models.autoencoder import AutoencoderConfig, TriplaneAutoencoder
from pvdm.train import distributed
from pvdm.train.early_stopping import DivergenceGuard, EarlyStopping
from pvdm.train.loop import TrainingRun
from pvdm.utils.io import atomic_write_json, sha256_file
from pvdm.utils.media import write_grid

log = logging.getLogger("pvdm.train")

GAN_KEYS = ("gan_weight", "fm_weight", "adaptive_gan_weight", "disc_ndf", "disc_layers")


def train_autoencoder(
    exp: dict[str, Any],
    data_dir: str | Path,
    out_dir: str | Path,
    stage: str = "stage1",
    init: str | Path | None = None,
    device: str | None = None,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Train one stage; writes state.pt (resumable), model.pt, metrics.json, log.jsonl under out_dir.

    ``stage``: "stage1" or "gan". ``init``: the checkpoint to start from (the GAN stage starts from
    stage 1's model.pt). ``max_steps`` stops early after that many iterations (to test resume).
    """
    if stage not in ("stage1", "gan"):
        raise ValueError(f"stage {stage!r}; choose stage1 or gan")
    gan = stage == "gan"
    ae_cfg, tcfg, out_dir = exp["autoencoder"], exp["autoencoder"][stage], Path(out_dir)
    model_cfg = AutoencoderConfig.from_dict(ae_cfg["model"])
    train_store, test_store = ClipStore(Path(data_dir) / "train"), ClipStore(Path(data_dir) / "test")
    if model_cfg.resolution != train_store.resolution or model_cfg.frames > train_store.frames:
        raise ValueError(
            f"autoencoder.model (resolution {model_cfg.resolution}, frames {model_cfg.frames}) does not fit the "
            f"clips in {train_store.path} ({train_store.resolution}px, {train_store.frames} frames)"
        )
    # Inputs are checked before the run takes the folder's lock or writes anything (loaded again
    # in the run, after seeding: building a model draws from the global RNG the discriminators use).
    if init is not None:
        load_initial(init, model_cfg)
    # The run's identity: settings and the content of every input (not their paths).
    run_cfg = {"stage": stage, "seed": exp["seed"], "autoencoder": ae_cfg, "train_store": train_store.fingerprint(),
               "test_store": test_store.fingerprint(), "init_sha256": sha256_file(init) if init is not None else None}
    with TrainingRun(
        out_dir, run_cfg, seed=exp["seed"], steps=tcfg["steps"], save_every=tcfg["save_every"],
        log_every=tcfg["log_every"], max_steps=max_steps, device=device, amp=tcfg["amp"],
        desc=f"autoencoder {stage}",
    ) as run:
        run.check_batch(tcfg["batch_size"], f"autoencoder.{stage}.batch_size")
        trainer = StageTrainer(run, exp, stage, model_cfg, train_store, test_store, init, out_dir)
        run.resume()
        trainer.wrap()
        if gan and run.start == 0 and trainer.stopper.best is None:
            trainer.evaluate(0)  # the starting point is a candidate too: GAN tuning must not make things worse
            run.save(0)
        for step in run.steps():
            done = step + 1
            values = trainer.step(step)
            run.log(done, values, progress=values["g/total"])
            if gan and run.stop_reason is None and done % tcfg["eval_every"] == 0:
                trainer.evaluate(done)
            run.checkpoint(done)
        if not run.completed:
            return {"step": run.done, "stopped": "max_steps"}
        return trainer.finish() if run.dist.is_main else {}


class StageTrainer:
    """One autoencoder stage's parts (model, losses, optimisers, discriminators, early stopping) and
    its step: a generator update, then (GAN stage) a discriminator update and the divergence check."""

    def __init__(self, run: TrainingRun, exp: dict[str, Any], stage: str, model_cfg: AutoencoderConfig,
                 train_store: ClipStore, test_store: ClipStore, init: str | Path | None, out_dir: Path):
        self.run, self.gan, self.tcfg, self.out_dir = run, stage == "gan", exp["autoencoder"][stage], out_dir
        self.seed, self.train_store, self.test_store = exp["seed"], train_store, test_store
        tcfg = self.tcfg
        self.model = (load_initial(init, model_cfg) if init is not None else TriplaneAutoencoder(model_cfg)).to(
            run.device)
        gan_settings = {k: tcfg[k] for k in GAN_KEYS} if self.gan else {"disc_ndf": None}  # stage 1: no discriminators
        self.loss_fn = AutoencoderLoss(
            l1_weight=tcfg["l1_weight"], lpips_weight=tcfg["lpips_weight"], mse_weight=tcfg["mse_weight"],
            **gan_settings,
        ).to(run.device)
        self.opt_g = adamw(self.model.parameters(), tcfg)
        self.scaler_g = run.precision.scaler()  # fp16 loss scaling (a pass-through otherwise)
        run.register(model=self.model, opt_g=self.opt_g, scaler_g=self.scaler_g)
        self.stopper = self.guard = None
        if self.gan:
            self._add_discriminators()
        self.frames, self.accum = model_cfg.frames, tcfg["grad_accum"]

    def _add_discriminators(self) -> None:
        run, loss_fn, tcfg = self.run, self.loss_fn, self.tcfg
        for name in ("discriminator_2d", "discriminator_3d"):
            setattr(loss_fn, name, distributed.sync_batchnorm(getattr(loss_fn, name), run.dist))
        if run.dist.enabled:
            log.info("discriminator batch statistics over all ranks: %s",
                     "SyncBatchNorm" if run.device.type == "cuda" else "CrossRankBatchNorm (gloo)")
        self.opt_d = adamw([*loss_fn.discriminator_2d.parameters(), *loss_fn.discriminator_3d.parameters()], tcfg)
        self.scaler_d = run.precision.scaler()
        self.stopper = EarlyStopping(tcfg["monitor"], tcfg["patience"], tcfg["min_delta"])
        self.guard = DivergenceGuard(tcfg["spike_factor"])
        run.register(opt_d=self.opt_d, scaler_d=self.scaler_d, discriminator_2d=loss_fn.discriminator_2d,
                     discriminator_3d=loss_fn.discriminator_3d, early_stopping=self.stopper, divergence=self.guard)

    def wrap(self) -> None:
        """After resuming: DDP around the model (not the discriminators: they run twice per backward),
        the batches of this rank, train mode."""
        run, tcfg = self.run, self.tcfg
        self.ddp_model = self.model
        if run.dist.enabled:
            self.ddp_model = DDP(self.model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
        self.batches = ClipBatches(self.train_store, tcfg["batch_size"], self.frames, self.seed, run.dist.rank,
                                   run.dist.world_size)
        self.last_layer = self.model.to_pixel[1].weight if self.gan and tcfg["adaptive_gan_weight"] else None
        self.model.train()

    def micro_batch(self, m: int) -> torch.Tensor:
        return to_model_range(self.batches.get(m).to(self.run.device, non_blocking=True))  # b c t h w

    def frame_index(self, gen: torch.Generator) -> torch.Tensor:
        # The LPIPS / 2-D discriminator frame of each clip, drawn for the global batch: the same
        # frames whatever the number of ranks.
        return torch.randint(0, self.frames, (self.tcfg["batch_size"],), generator=gen)[self.batches.local_slice]

    def step(self, step: int) -> dict[str, float]:
        """One iteration; the logged values (g/*, d/total)."""
        gen = self.run.generator(step, 0)
        micro = step * self.accum * (2 if self.gan else 1)
        g_terms = self.generator_phase(micro, gen)
        values = {f"g/{k}": v for k, v in g_terms.items()}
        if self.gan:
            micro_batches = [self.micro_batch(micro + self.accum + j) for j in range(self.accum)]
            values["d/total"] = discriminator_step(
                self.loss_fn, self.ddp_model, self.opt_d, self.scaler_d, micro_batches,
                [self.frame_index(gen) for _ in range(self.accum)], self.run, self.tcfg,
            )
            # Decided on the loss of the global batch: every rank stops at the same step.
            reason = self.guard.check(distributed.mean_across_ranks({"g": g_terms["total"]}, self.run.dist)["g"])
            if reason is not None:
                self.run.stop(reason)
                log.warning("step %d: %s; stopping (best.pt keeps the last good model)", step + 1, reason)
        return values

    def generator_phase(self, micro: int, gen: torch.Generator) -> dict[str, float]:
        """One generator update over ``grad_accum`` micro-batches; the mean loss terms."""
        self.opt_g.zero_grad(set_to_none=True)
        g_terms: dict[str, float] = {}
        for j in range(self.accum):
            x = self.micro_batch(micro + j)
            with self.run.autocast():
                x_hat = self.ddp_model(x)
                terms = self.loss_fn.generator_loss(x, x_hat.float(), gan_active=self.gan, last_layer=self.last_layer,
                                                    frame_index=self.frame_index(gen))
            self.scaler_g.scale(terms["total"] / self.accum).backward()
            for k, v in terms.items():
                g_terms[k] = g_terms.get(k, 0.0) + v.item() / self.accum
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        return g_terms

    def evaluate(self, step: int) -> None:
        """Held-out metrics; best.pt when they improve; the early stop when they have not for long."""
        run, stopper = self.run, self.stopper
        # LPIPS costs a VGG pass per frame: only when it is the monitored metric.
        metrics = recon_metrics(self.model, self.test_store, self.tcfg["eval_videos"], self.frames,
                                device=run.device, with_lpips=stopper.monitor == "lpips")
        # Every rank evaluates the same model on the same clips; the mean makes the decision one.
        metrics = {**metrics, **distributed.mean_across_ranks(
            {k: v for k, v in metrics.items() if k != "num_videos"}, run.dist)}
        improved = stopper.update(step, metrics)
        log.info("eval step %d: %s%s", step, {k: round(v, 4) for k, v in metrics.items()},
                 " (best)" if improved else "")
        run.logger.log(step, {f"eval/{k}": v for k, v in metrics.items() if k != "num_videos"})
        if improved and run.dist.is_main:
            save_autoencoder(self.model, self.out_dir / "best.pt")
        if step > 0 and stopper.should_stop:
            run.stop(f"early stop: no {stopper.monitor} improvement in {stopper.patience} "
                     f"evaluations (best {stopper.best:.4g} at step {stopper.best_step})")
            log.info(run.stop_reason)

    def finish(self) -> dict[str, Any]:
        """model.pt, metrics.json and the reconstruction grid of the finished stage (main rank)."""
        run, out_dir = self.run, self.out_dir
        if self.gan:
            metrics = finish_gan(out_dir, run, self.stopper, self.tcfg["steps"])
        else:
            metrics = finish_stage1(self.model, out_dir, run, self.test_store, self.tcfg["eval_videos"])
        final = load_autoencoder(out_dir / "model.pt", map_location=run.device)
        write_recon_grid(final, self.test_store, self.frames, out_dir / "recon_grid", run.device)
        atomic_write_json(out_dir / "metrics.json", metrics)
        return metrics


def discriminator_step(
    loss_fn: AutoencoderLoss,
    model: torch.nn.Module,
    opt_d: torch.optim.Optimizer,
    scaler_d: torch.amp.GradScaler,
    micro_batches: list[torch.Tensor],
    frame_indices: list[torch.Tensor],
    run: TrainingRun,
    tcfg: dict[str, Any],
) -> float:
    """One discriminator update over the given micro-batches (reconstructions detached); its loss."""
    opt_d.zero_grad(set_to_none=True)  # drops the grads the G phase wrote into D
    total = 0.0
    for x, index in zip(micro_batches, frame_indices, strict=True):
        with torch.no_grad(), run.autocast():
            x_hat = model(x)
        with run.autocast():
            d_terms = loss_fn.discriminator_loss(x, x_hat.float(), frame_index=index)
        scaler_d.scale(d_terms["total"] / len(micro_batches)).backward()
        total += d_terms["total"].item() / len(micro_batches)
    distributed.average_gradients(list(opt_d.param_groups[0]["params"]), run.dist)
    scaler_d.unscale_(opt_d)
    for disc in (loss_fn.discriminator_2d, loss_fn.discriminator_3d):
        torch.nn.utils.clip_grad_norm_(disc.parameters(), tcfg["d_grad_clip"])
    scaler_d.step(opt_d)
    scaler_d.update()
    return total


def finish_stage1(
    model: TriplaneAutoencoder, out_dir: Path, run: TrainingRun, test_store: ClipStore, eval_videos: int
) -> dict[str, Any]:
    """model.pt, and held-out metrics of the untrained and the trained model."""
    save_autoencoder(model, out_dir / "model.pt")
    torch.manual_seed(run.seed)  # the same initialisation the run started from: the baseline to beat
    untrained = TriplaneAutoencoder(model.cfg).to(run.device)
    frames = model.cfg.frames
    metrics: dict[str, Any] = {"stage": "stage1", "steps": run.done}
    metrics["heldout_untrained"] = recon_metrics(untrained, test_store, eval_videos, frames, device=run.device)
    metrics["heldout_trained"] = recon_metrics(model, test_store, eval_videos, frames, device=run.device)
    log.info("held-out PSNR: untrained %.2f dB -> trained %.2f dB",
             metrics["heldout_untrained"]["psnr"], metrics["heldout_trained"]["psnr"])
    return metrics


def finish_gan(out_dir: Path, run: TrainingRun, stopper: EarlyStopping, steps: int) -> dict[str, Any]:
    """model.pt = the best evaluation (best.pt), and history.json with every evaluation and the stop."""
    save_autoencoder(load_autoencoder(out_dir / "best.pt", map_location="cpu"), out_dir / "model.pt")
    history = {
        "monitor": stopper.monitor,
        "mode": stopper.mode,
        "patience": stopper.patience,
        "min_delta": stopper.min_delta,
        "best": stopper.best,
        "best_step": stopper.best_step,
        "stopped_at": run.done,
        "stop_reason": run.stop_reason or f"reached {steps} steps",
        "stopped_early": run.stop_reason is not None,
        "evaluations": stopper.history,
    }
    atomic_write_json(out_dir / "history.json", history)
    return {
        "stage": "gan",
        "steps": run.done,
        "best_step": stopper.best_step,
        "stop_reason": history["stop_reason"],
        "heldout_start": stopper.history[0],
        "heldout_best": next(h for h in stopper.history if h["step"] == stopper.best_step),
    }


def adamw(params: Any, tcfg: dict[str, Any]) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=tcfg["lr"], betas=tuple(tcfg["betas"]), weight_decay=tcfg["weight_decay"])


def load_initial(init: str | Path, cfg: AutoencoderConfig) -> TriplaneAutoencoder:
    """The checkpoint a stage starts from, rebuilt with this experiment's runtime options (e.g.
    gradient checkpointing); its architecture must be the experiment's."""
    loaded = load_autoencoder(init, map_location="cpu")
    runtime = {"gradient_checkpointing": False}
    if loaded.cfg.to_dict() | runtime != cfg.to_dict() | runtime:
        raise ValueError(f"{init}: its model config differs from autoencoder.model of this experiment")
    model = TriplaneAutoencoder(cfg)
    model.load_state_dict(loaded.state_dict())
    return model


def write_recon_grid(
    model: TriplaneAutoencoder, store: ClipStore, frames: int, stem: Path, device: torch.device, n: int = 8
) -> None:
    """Held-out clips (odd rows) above their reconstructions (even rows), as mp4 and gif."""
    real, rec = next(reconstruct(model, store, n, frames, n, device))
    rows = [v for i in range(0, len(real), 4) for v in (real[i : i + 4], rec[i : i + 4])]
    write_grid(np.concatenate(rows), stem, ncol=min(4, len(real)))
