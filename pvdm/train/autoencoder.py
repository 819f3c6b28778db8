"""Autoencoder training: stage 1 (L1 + LPIPS) and GAN fine-tuning with automatic early stopping.

One iteration = one generator update over ``grad_accum`` micro-batches, then (GAN stage) one
discriminator update over the next ``grad_accum`` micro-batches, as the original alternates its
G and D phases. Micro-batch ``m`` of the run is always the same data (``ClipBatches.get(m)``) and
the random LPIPS frame of step ``k`` comes from a generator seeded by (seed, k), so a killed and
resumed run computes exactly what an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from pvdm.checkpoints import load_autoencoder, save_autoencoder
from pvdm.data.loader import ClipBatches, to_model_range
from pvdm.data.store import ClipStore
from pvdm.eval.autoencoder import recon_metrics, reconstruct
from pvdm.losses.gan import AutoencoderLoss
from pvdm.models.autoencoder import AutoencoderConfig, TriplaneAutoencoder
from pvdm.report.media import write_grid
from pvdm.train import distributed
from pvdm.train.early_stopping import DivergenceGuard, EarlyStopping
from pvdm.train.logger import TrainLogger
from pvdm.train.state import load_state, save_state, set_rng_state
from pvdm.utils.io import atomic_write_json
from pvdm.utils.progress import Progress

log = logging.getLogger("pvdm.train")


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16 / fp16 autocast on GPU; CPU runs fp32 (CPU autocast is slower than fp32 here)."""
    if device.type != "cuda" or amp == "none":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 7 + stream)


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
    ae_cfg = exp["autoencoder"]
    tcfg = ae_cfg[stage]
    seed = exp.get("seed", 0)
    out_dir = Path(out_dir)
    d = distributed.setup(device)
    torch.manual_seed(seed)

    model_cfg = AutoencoderConfig.from_dict(ae_cfg["model"])
    train_store, test_store = ClipStore(Path(data_dir) / "train"), ClipStore(Path(data_dir) / "test")
    if model_cfg.resolution != train_store.resolution or model_cfg.frames > train_store.frames:
        raise ValueError(
            f"autoencoder.model (resolution {model_cfg.resolution}, frames {model_cfg.frames}) does not fit the "
            f"clips in {train_store.path} ({train_store.resolution}px, {train_store.frames} frames)"
        )
    if init is not None:
        model = load_autoencoder(init, map_location="cpu")
        if model.cfg.to_dict() | {"gradient_checkpointing": False} != model_cfg.to_dict() | {
            "gradient_checkpointing": False
        }:
            raise ValueError(f"{init}: its model config differs from autoencoder.model of this experiment")
        model = rebuild_with_config(model, model_cfg)
    else:
        model = TriplaneAutoencoder(model_cfg)
    model.to(d.device)
    gan = stage == "gan"
    loss_fn = AutoencoderLoss(
        l1_weight=tcfg["l1_weight"],
        lpips_weight=tcfg["lpips_weight"],
        mse_weight=tcfg["mse_weight"],
        gan_weight=tcfg.get("gan_weight", 1.0),
        fm_weight=tcfg.get("fm_weight", 4.0),
        adaptive_gan_weight=tcfg.get("adaptive_gan_weight", False),
        disc_ndf=tcfg.get("disc_ndf", 64),
        disc_layers=tcfg.get("disc_layers", 3),
        sync_bn=d.enabled,
    ).to(d.device)
    opt_g = torch.optim.AdamW(
        model.parameters(), lr=tcfg["lr"], betas=tuple(tcfg["betas"]), weight_decay=tcfg["weight_decay"]
    )
    disc_params = [*loss_fn.discriminator_2d.parameters(), *loss_fn.discriminator_3d.parameters()]
    opt_d = torch.optim.AdamW(
        disc_params, lr=tcfg["lr"], betas=tuple(tcfg["betas"]), weight_decay=tcfg["weight_decay"]
    )
    fp16 = d.device.type == "cuda" and tcfg["amp"] == "fp16"
    scaler_g = torch.amp.GradScaler("cuda", enabled=fp16)
    scaler_d = torch.amp.GradScaler("cuda", enabled=fp16)
    stopper = EarlyStopping(tcfg["monitor"], tcfg["patience"], tcfg["min_delta"]) if gan else None
    guard = DivergenceGuard(tcfg["spike_factor"]) if gan else None

    run_cfg = {"stage": stage, "seed": seed, "autoencoder": ae_cfg, "data": str(data_dir), "init": str(init)}
    state_path = out_dir / "state.pt"
    state = load_state(state_path, run_cfg)
    start, stop_reason = 0, None
    if state is not None:
        model.load_state_dict(state["model"])
        opt_g.load_state_dict(state["opt_g"])
        loss_fn.discriminator_2d.load_state_dict(state["discriminator_2d"])
        loss_fn.discriminator_3d.load_state_dict(state["discriminator_3d"])
        opt_d.load_state_dict(state["opt_d"])
        scaler_g.load_state_dict(state["scaler_g"])
        scaler_d.load_state_dict(state["scaler_d"])
        if stopper is not None:
            stopper.load_state_dict(state["early_stopping"])
            guard.load_state_dict(state["divergence"])
        set_rng_state(state["rng"])
        start, stop_reason = state["step"], state.get("stop_reason")
    ddp_model = (
        DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None) if d.enabled else model
    )
    if d.enabled:
        loss_fn.discriminator_2d = DDP(loss_fn.discriminator_2d)
        loss_fn.discriminator_3d = DDP(loss_fn.discriminator_3d)

    frames = model_cfg.frames
    batches = ClipBatches(train_store, tcfg["batch_size"], frames, seed, d.rank, d.world_size)
    accum = tcfg["grad_accum"]
    logger = TrainLogger(out_dir, enabled=d.is_main)
    logger.truncate_after(start)
    steps = tcfg["steps"] if max_steps is None else min(tcfg["steps"], max_steps)
    last_layer = model.to_pixel[1].weight if tcfg.get("adaptive_gan_weight") else None

    def save(step: int) -> None:
        if d.is_main:
            extra = {"early_stopping": stopper.state_dict(), "divergence": guard.state_dict()} if gan else {}
            save_state(
                state_path,
                step,
                run_cfg,
                model=model,
                opt_g=opt_g,
                opt_d=opt_d,
                scaler_g=scaler_g,
                scaler_d=scaler_d,
                discriminator_2d=_unwrap(loss_fn.discriminator_2d),
                discriminator_3d=_unwrap(loss_fn.discriminator_3d),
                stop_reason=stop_reason,
                **extra,
            )
        distributed.barrier(d)

    def evaluate(step: int) -> None:
        # LPIPS costs a VGG pass per frame: only when it is the monitored metric.
        metrics = recon_metrics(
            model,
            test_store,
            tcfg["eval_videos"],
            frames,
            device=d.device,
            with_lpips=stopper.monitor == "lpips",
        )
        improved = stopper.update(step, metrics)
        log.info(
            "eval step %d: %s%s",
            step,
            {k: round(v, 4) for k, v in metrics.items()},
            " (best)" if improved else "",
        )
        logger.log(step, {f"eval/{k}": v for k, v in metrics.items() if k != "num_videos"})
        if improved and d.is_main:
            save_autoencoder(model, out_dir / "best.pt")
        model.train()

    model.train()
    done = start
    if gan and start == 0 and stopper.best is None:
        evaluate(0)  # the starting point is a candidate too: GAN tuning must not make things worse
        save(0)
    with Progress(steps, f"autoencoder {stage}", initial=start) as bar:
        for step in range(start, steps):
            if stop_reason is not None:
                break
            gen = step_generator(seed, step, 0)
            micro = step * accum * (2 if gan else 1)
            # --- generator phase
            opt_g.zero_grad(set_to_none=True)
            g_terms: dict[str, float] = {}
            for j in range(accum):
                x = to_model_range(batches.get(micro + j).to(d.device, non_blocking=True))
                with autocast(d.device, tcfg["amp"]):
                    x_hat = ddp_model(x)
                    terms = loss_fn.generator_loss(
                        x, x_hat.float(), gan_active=gan, last_layer=last_layer, generator=gen
                    )
                scaler_g.scale(terms["total"] / accum).backward()
                for k, v in terms.items():
                    g_terms[k] = g_terms.get(k, 0.0) + v.item() / accum
            scaler_g.step(opt_g)
            scaler_g.update()
            values = {f"g/{k}": v for k, v in g_terms.items()}
            # --- discriminator phase
            if gan:
                opt_d.zero_grad(set_to_none=True)  # drops the grads the G phase wrote into D
                d_total = 0.0
                for j in range(accum):
                    x = to_model_range(batches.get(micro + accum + j).to(d.device, non_blocking=True))
                    with torch.no_grad(), autocast(d.device, tcfg["amp"]):
                        x_hat = ddp_model(x)
                    with autocast(d.device, tcfg["amp"]):
                        d_terms = loss_fn.discriminator_loss(x, x_hat.float(), generator=gen)
                    scaler_d.scale(d_terms["total"] / accum).backward()
                    d_total += d_terms["total"].item() / accum
                scaler_d.unscale_(opt_d)
                for disc in (loss_fn.discriminator_2d, loss_fn.discriminator_3d):
                    torch.nn.utils.clip_grad_norm_(disc.parameters(), tcfg["d_grad_clip"])
                scaler_d.step(opt_d)
                scaler_d.update()
                values["d/total"] = d_total
                reason = guard.check(g_terms["total"])
                if reason is not None:
                    stop_reason = reason
                    log.warning("step %d: %s; stopping (best.pt keeps the last good model)", step + 1, reason)
            done = step + 1
            bar.update(1, loss=g_terms["total"])
            if done % tcfg["log_every"] == 0 or done == steps:
                logger.log(done, values)
            if gan and stop_reason is None and done % tcfg["eval_every"] == 0:
                evaluate(done)
                if stopper.should_stop:
                    stop_reason = (
                        f"early stop: no {stopper.monitor} improvement in {stopper.patience} "
                        f"evaluations (best {stopper.best:.4g} at step {stopper.best_step})"
                    )
                    log.info(stop_reason)
            if done % tcfg["save_every"] == 0 or done == steps or stop_reason is not None:
                save(done)
    final_step = done
    logger.close()
    if max_steps is not None and final_step < tcfg["steps"] and stop_reason is None:
        return {"step": final_step, "stopped": "max_steps"}
    return finish(model, out_dir, stage, final_step, stop_reason, stopper, test_store, tcfg, frames, d, seed)


def finish(
    model: TriplaneAutoencoder,
    out_dir: Path,
    stage: str,
    step: int,
    stop_reason: str | None,
    stopper: EarlyStopping | None,
    test_store: ClipStore,
    tcfg: dict[str, Any],
    frames: int,
    d: distributed.Dist,
    seed: int,
) -> dict[str, Any]:
    """Write the stage's outputs: model.pt (GAN: the best evaluation), metrics.json, history.json."""
    if not d.is_main:
        return {}
    out_dir = Path(out_dir)
    metrics: dict[str, Any] = {"stage": stage, "steps": step}
    if stage == "gan":
        best = load_autoencoder(out_dir / "best.pt", map_location="cpu")
        save_autoencoder(best, out_dir / "model.pt")
        history = {
            "monitor": stopper.monitor,
            "mode": stopper.mode,
            "patience": stopper.patience,
            "min_delta": stopper.min_delta,
            "best": stopper.best,
            "best_step": stopper.best_step,
            "stopped_at": step,
            "stop_reason": stop_reason or f"reached {tcfg['steps']} steps",
            "stopped_early": stop_reason is not None,
            "evaluations": stopper.history,
        }
        atomic_write_json(out_dir / "history.json", history)
        metrics.update(
            best_step=stopper.best_step,
            stop_reason=history["stop_reason"],
            heldout_start=stopper.history[0],
            heldout_best=next(h for h in stopper.history if h["step"] == stopper.best_step),
        )
    else:
        save_autoencoder(model, out_dir / "model.pt")
        torch.manual_seed(seed)  # the same initialisation the run started from: the baseline to beat
        untrained = TriplaneAutoencoder(model.cfg).to(d.device)
        n = tcfg["eval_videos"]
        metrics["heldout_untrained"] = recon_metrics(untrained, test_store, n, frames, device=d.device)
        metrics["heldout_trained"] = recon_metrics(model, test_store, n, frames, device=d.device)
        log.info(
            "held-out PSNR: untrained %.2f dB -> trained %.2f dB",
            metrics["heldout_untrained"]["psnr"],
            metrics["heldout_trained"]["psnr"],
        )
    final = load_autoencoder(out_dir / "model.pt", map_location=d.device)
    write_recon_grid(final, test_store, frames, out_dir / "recon_grid", d.device)
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics


def write_recon_grid(
    model: TriplaneAutoencoder, store: ClipStore, frames: int, stem: Path, device: torch.device, n: int = 8
) -> None:
    """Held-out clips (odd rows) above their reconstructions (even rows), as mp4 and gif."""
    real, rec = next(reconstruct(model, store, n, frames, n, device))
    rows = [v for i in range(0, len(real), 4) for v in (real[i : i + 4], rec[i : i + 4])]
    write_grid(np.concatenate(rows), stem, ncol=min(4, len(real)))


def rebuild_with_config(model: TriplaneAutoencoder, cfg: AutoencoderConfig) -> TriplaneAutoencoder:
    """Same weights, this experiment's runtime options (e.g. gradient checkpointing)."""
    fresh = TriplaneAutoencoder(cfg)
    fresh.load_state_dict(model.state_dict())
    return fresh


def _unwrap(m: torch.nn.Module) -> torch.nn.Module:
    return m.module if isinstance(m, DDP) else m
