"""What a config's DAG costs: jobs, GPUs per job and GPU-hours per rule (`pvdm plan`).

GPU-hours come from measured rates only: ``benchmarks/results/throughput.json`` (written by
``benchmarks/gpu_suite.py`` on a GPU; its ``rates`` section, with the GPU it was measured on) and,
where nothing was measured, the figures the PVDM paper publishes (marked as such). A rule without
a rate says "not measured" instead of guessing. Hours are single-GPU hours: a job on N GPUs takes
about hours / N of wall time if it scales linearly (not measured either).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvdm.dag import Dag, ExperimentDag

THROUGHPUT = Path("benchmarks") / "results" / "throughput.json"
# Published figures, used only where no measurement exists.
PUBLISHED = {
    "sample_s_per_clip": {"value": 20.4, "unit": "s/clip",
                          "basis": "PVDM paper: 16x256x256 clip, 400-step DDIM", "measured_on": "RTX 3090 Ti (paper)"},
}


@dataclass
class RuleCost:
    rule: str
    jobs: int
    gpus_per_job: int
    gpu_hours: float | None
    basis: str
    measured_on: str | None = None
    nodes: int = 1  # per job


def load_rates(path: str | os.PathLike | None = None) -> tuple[dict[str, Any], str | None]:
    """``rates`` of a throughput file and the GPU it was measured on (empty when there is none)."""
    path = Path(path) if path is not None else THROUGHPUT
    if not path.is_file():
        return {}, None
    data = json.loads(path.read_text())
    if not data.get("valid_for_planning", False):
        raise ValueError(f"{path}: not measured at paper scale on a GPU (valid_for_planning is false)")
    on = data.get("measured_on", {})
    return data.get("rates", {}), f"{on.get('gpu') or on.get('device')} (torch {on.get('torch')}, {on.get('date')})"


def experiment_costs(e: ExperimentDag, rates: dict[str, Any], measured_on: str | None) -> list[RuleCost]:
    cfg, out = e.cfg, []

    def rate(name: str) -> tuple[float | None, str | None]:
        if name in rates:
            return rates[name]["value"], measured_on
        if name in PUBLISHED:
            return PUBLISHED[name]["value"], PUBLISHED[name]["measured_on"]
        return None, None

    def add(rule: str, jobs: int, seconds: float | None, basis: str, on: str | None) -> None:
        j = e.job(rule)  # a job on several nodes holds gpu (per node) x nodes GPUs
        out.append(RuleCost(rule, jobs, j["gpu"] * j["nodes"], None if seconds is None else seconds / 3600, basis, on,
                            j["nodes"]))

    if e.trains_autoencoder:
        s1 = cfg["autoencoder"]["stage1"]
        clips = s1["steps"] * s1["batch_size"] * s1["grad_accum"]
        r, on = rate("ae_train_clips_per_s")
        add("train_autoencoder", 1, clips / r if r else None,
            f"{s1['steps']:,} steps x {s1['batch_size'] * s1['grad_accum']} clips = {clips:,} clips"
            + (f" / {r:.3g} clips/s" if r else ": no autoencoder training rate measured"), on)
    if e.has_gan:
        g = cfg["autoencoder"]["gan"]
        clips = g["steps"] * g["batch_size"] * g["grad_accum"]
        r, on = rate("ae_train_clips_per_s")
        add("finetune_gan", 1, 3 * clips / r if r else None,
            f"at most {g['steps']:,} steps (early stopping usually ends sooner) x {g['batch_size'] * g['grad_accum']} "
            f"clips, counted as 3 autoencoder steps each (G + D phases, discriminators)"
            + (f" at {r:.3g} clips/s" if r else ": no rate measured"), on)
    if "diffusion" in cfg and not e.released:
        t = cfg["diffusion"]["train"]
        samples = t["steps"] * t["batch_size"]
        r, on = rate("unet_train_samples_per_s")
        add("train_diffusion", 1, samples / r if r else None,
            f"{t['steps']:,} steps x batch {t['batch_size']} = {samples:,} samples"
            + (f" / {r:.3g} samples/s" if r else ": no U-Net training rate measured")
            + "; the latent cache (one encode per clip window) not counted", on)
    if e.samples:
        sampler = e.sampler
        per_clip, on = rate("sample_s_per_clip")  # one 16-frame clip, 400 DDIM steps, decode included
        for kind, frames in e.sample_runs():
            n, k = e.sample_count(frames), frames // e.clip_length
            seconds = n * k * per_clip * sampler.steps / 400 if per_clip else None
            add("sample", len(e.shards(frames)), seconds,
                f"{kind}{frames}: {n:,} videos x {k} clip(s) x {sampler.label}"
                + (f" at {per_clip:.3g} s per 400-step clip, scaled by steps" if per_clip else ": not measured"), on)
    if e.evaluates:
        r, on = rate("i3d_16f_clips_per_s")
        n = cfg["eval"]["recon_videos"]
        add("eval_recon", 1, 2 * n / r if r else None,
            f"2 x {n:,} clips (held-out + reconstructions) through I3D" + (f" at {r:.3g} clips/s" if r else
                                                                          ": not measured")
            + "; the reconstructions themselves not counted", on)
        for kind, frames in e.sample_runs():
            n = e.fvd_count(frames)
            add("eval_fvd", 1, 2 * n * frames / 16 / r if r else None,
                f"fvd{frames}_{kind}: 2 x {n:,} clips through I3D" + (f" at {r:.3g} 16-frame clips/s" if r else
                                                                       ": not measured"), on)
    return out


def plan_costs(config: dict[str, Any], throughput: str | os.PathLike | None = None) -> tuple[list[RuleCost], str | None]:
    rates, measured_on = load_rates(throughput)
    plan = Dag(config)
    return [c for exp in plan.selected for c in experiment_costs(plan[exp], rates, measured_on)], measured_on


def to_markdown(costs: list[RuleCost], measured_on: str | None) -> str:
    lines = ["| rule | jobs | GPUs per job | GPU-hours | basis | measured on |", "|---|---|---|---|---|---|"]
    for c in costs:
        hours = "not measured" if c.gpu_hours is None else f"{c.gpu_hours:,.1f}"
        gpus = f"{c.gpus_per_job} ({c.nodes} nodes x {c.gpus_per_job // c.nodes})" if c.nodes > 1 else c.gpus_per_job
        lines.append(f"| {c.rule} | {c.jobs} | {gpus} | {hours} | {c.basis} | {c.measured_on or '-'} |")
    known = [c.gpu_hours for c in costs if c.gpu_hours is not None]
    total = f"{sum(known):,.1f}" + (" (partial: some rules not measured)" if len(known) < len(costs) else "")
    lines += ["", f"Total: {total} GPU-hours. Rates: "
              + (measured_on or f"no {THROUGHPUT} (run benchmarks/gpu_suite.py on a GPU); published figures only")]
    return "\n".join(lines) + "\n"
