"""What a config's DAG costs: jobs, GPUs per job and GPU-hours per rule (`pvdm plan`).

The one cost model of the project. GPU-hours come from measured rates only:
``benchmarks/results/throughput.json`` (written by ``benchmarks/gpu_suite.py`` on a GPU; its ``rates``
section, with the GPU it was measured on) and, where nothing was measured, the figures the PVDM paper
publishes (marked as such). A rule without a rate says "not measured" instead of guessing.

Rates are per GPU, measured at the batch one GPU runs: a training job of global batch B on G GPUs
runs B / G per GPU (the paper's autoencoder: 8 clips on 8 GPUs = 1 per GPU; its U-Net: 64 samples on 8
GPUs = 8 per GPU), and a rate measured at another per-GPU batch does not apply (small batches use a
GPU less well: reading a rate at the global batch gives too few GPU-hours). A training job takes
``steps x (B / G) x grad_accum / rate`` seconds of wall time on each of its G GPUs, i.e. G times that
in GPU-hours (linear scaling over GPUs assumed, not measured). A rate entry is
``{"value": ..., "per_gpu_batch": b, ...}``; a rate may hold a list of them (one per batch measured).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvdm.dag import Dag, ExperimentDag
from pvdm.diffusion.samplers import PAPER_SAMPLER, Sampler

THROUGHPUT = Path("benchmarks") / "results" / "throughput.json"
# Published figures, used only where no measurement exists.
PUBLISHED = {
    "sample_s_per_clip": {"value": 20.4, "unit": "s/clip",
                          "basis": "PVDM paper: 16x256x256 clip, 400-step DDIM", "measured_on": "RTX 3090 Ti (paper)"},
}

# The samplers `pvdm plan` prices side by side (the configured one is added when it is not here): the
# paper's, and cheaper ones whose FVD benchmarks/bench_samplers.py measured against it (README, "Evaluating
# for a fraction of the sampling cost"): DDIM eta 1 and DPM-Solver++(2M) SDE at 25 steps matched it there.
SAMPLER_CHOICES = (
    {"name": "ddim", "steps": 400, "eta": 1.0},
    {"name": "ddim", "steps": 100, "eta": 1.0},
    {"name": "ddim", "steps": 50, "eta": 1.0},
    {"name": "ddim", "steps": 25, "eta": 1.0},
    {"name": "dpmpp2m_sde", "steps": 25, "spacing": "time"},
    {"name": "dpmpp2m", "steps": 20, "spacing": "time"},
)


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


@dataclass
class Rate:
    """A rate looked up for one rule: its value (None = none applies) and what to say about it."""

    value: float | None
    measured_on: str | None
    note: str


def find_rate(rates: dict[str, Any], name: str, per_gpu_batch: int | None, measured_on: str | None) -> Rate:
    """The rate ``name`` measured at ``per_gpu_batch`` (None: any batch), else the published figure."""
    entries = rates.get(name, [])
    entries = [entries] if isinstance(entries, dict) else entries
    for entry in entries:
        if per_gpu_batch is None or entry.get("per_gpu_batch") == per_gpu_batch:
            return Rate(float(entry["value"]), measured_on, "")
    if name in PUBLISHED:
        return Rate(PUBLISHED[name]["value"], PUBLISHED[name]["measured_on"], " (published figure)")
    batches = sorted({str(e.get("per_gpu_batch", "unknown")) for e in entries})
    if entries:
        return Rate(None, None, f": {name} measured at per-GPU batch {', '.join(batches)}, not "
                                f"{per_gpu_batch}: not measured")
    return Rate(None, None, f": no {name} measured")


def per_gpu_batch(e: ExperimentDag, rule: str, batch: int) -> tuple[int, int]:
    """(GPUs of a job of ``rule``, the batch each of them runs): the global ``batch`` split over the
    job's processes (one per GPU; a CPU job counts as one device per process)."""
    job = e.job(rule)
    devices = max(job["nproc"], 1) * job.get("nodes", 1)  # nproc is per node
    return devices, batch // devices


def training_cost(e: ExperimentDag, rule: str, section: dict[str, Any], rate_name: str, rates: dict[str, Any],
                  measured_on: str | None, what: str) -> RuleCost:
    """GPU-hours of a training rule: its G GPUs each run ``steps x B / G x grad_accum`` clips or samples."""
    job = e.job(rule)
    gpus, per_gpu = per_gpu_batch(e, rule, section["batch_size"])
    accum = section.get("grad_accum", 1)
    r = find_rate(rates, rate_name, per_gpu, measured_on)
    basis = (f"{section['steps']:,} steps x batch {section['batch_size']} / {gpus} GPU(s) = {per_gpu} per GPU"
             + (f" x {accum} micro-batches" if accum > 1 else ""))
    nodes = job.get("nodes", 1)  # a job on several nodes holds gpu (per node) x nodes GPUs
    if r.value is None:
        return RuleCost(rule, 1, job["gpu"] * nodes, None, basis + r.note, nodes=nodes)
    wall_s = section["steps"] * per_gpu * accum / r.value
    return RuleCost(rule, 1, job["gpu"] * nodes, gpus * wall_s / 3600,
                    f"{basis}, at {r.value:.3g} {what}/s per GPU{r.note}; {gpus} GPU(s) x wall", r.measured_on, nodes)


def sampling_costs(e: ExperimentDag, rates: dict[str, Any], measured_on: str | None,
                   sampler: Sampler | None = None) -> list[RuleCost]:
    """One row per sample set: clips x seconds per clip at the sampling batch (one GPU per shard), with
    the experiment's sampler or ``sampler``. The rate is for the paper's 400 network evaluations per clip;
    a sampler costs in proportion to its evaluations (decoding, a small share at 400, is scaled along)."""
    out = []
    sampler = sampler or e.sampler
    batch = e.cfg["sampling"]["batch_size"]
    r = find_rate(rates, "sample_s_per_clip", batch, measured_on)  # one 16-frame clip, 400 DDIM steps, decode incl.
    for kind, frames in e.sample_runs():
        n, k = e.sample_count(frames), frames // e.clip_length
        seconds = n * k * r.value * sampler.evaluations / 400 if r.value else None
        out.append(RuleCost("sample", len(e.shards(frames)), e.job("sample")["gpu"],
                            None if seconds is None else seconds / 3600,
                            f"{kind}{frames}: {n:,} videos x {k} clip(s) x {sampler.label}"
                            + (f" at {r.value:.3g} s per 400-step clip{'' if r.note else f' (batch {batch})'}, "
                               f"scaled by network evaluations{r.note}"
                               if r.value else r.note), r.measured_on))
    return out


def experiment_costs(e: ExperimentDag, rates: dict[str, Any], measured_on: str | None) -> list[RuleCost]:
    cfg, out = e.cfg, []
    if e.trains_autoencoder:
        out.append(training_cost(e, "train_autoencoder", cfg["autoencoder"]["stage1"], "ae_train_clips_per_s", rates,
                                 measured_on, "clips"))
    if e.has_gan:
        row = training_cost(e, "finetune_gan", cfg["autoencoder"]["gan"], "gan_train_clips_per_s", rates,
                            measured_on, "clips (G + D phases)")
        row.basis = "at most " + row.basis + "; early stopping usually ends sooner; evaluations not counted"
        out.append(row)
    if "diffusion" in cfg and not e.released:
        row = training_cost(e, "train_diffusion", cfg["diffusion"]["train"], "unet_train_samples_per_s", rates,
                            measured_on, "samples")
        row.basis += "; the latent cache (one encode per clip window) not counted"
        out.append(row)
    if e.samples:
        out += sampling_costs(e, rates, measured_on)
    if e.evaluates:
        r = find_rate(rates, "i3d_16f_clips_per_s", None, measured_on)
        n = cfg["eval"]["recon_videos"]
        out.append(RuleCost("eval_recon", 1, e.job("eval_recon")["gpu"], 2 * n / r.value / 3600 if r.value else None,
                            f"2 x {n:,} clips (held-out + reconstructions) through I3D"
                            + (f" at {r.value:.3g} clips/s" if r.value else r.note)
                            + "; the reconstructions themselves not counted", r.measured_on))
        for kind, frames in e.sample_runs():
            n = e.fvd_count(frames)
            out.append(RuleCost("eval_fvd", 1, e.job("eval_fvd")["gpu"],
                                2 * n * frames / 16 / r.value / 3600 if r.value else None,
                                f"fvd{frames}_{kind}: 2 x {n:,} clips through I3D"
                                + (f" at {r.value:.3g} 16-frame clips/s" if r.value else r.note), r.measured_on))
    return out


def plan_costs(config: dict[str, Any], throughput: str | os.PathLike | None = None) -> tuple[list[RuleCost], str | None]:
    rates, measured_on = load_rates(throughput)
    plan = Dag(config)
    return [c for exp in plan.selected for c in experiment_costs(plan[exp], rates, measured_on)], measured_on


def sampler_choices(config: dict[str, Any], throughput: str | os.PathLike | None = None
                    ) -> tuple[list[tuple[str, Sampler, float | None, bool]], str | None]:
    """Sampling GPU-hours of every selected experiment under each of SAMPLER_CHOICES and its own sampler:
    (experiment, sampler, GPU-hours or None when not measured, whether it is the configured one)."""
    rates, measured_on = load_rates(throughput)
    plan = Dag(config)
    out = []
    for exp in plan.selected:
        e = plan[exp]
        if not e.samples:
            continue
        choices = [Sampler.from_config(c) for c in SAMPLER_CHOICES]
        if e.sampler.label not in {c.label for c in choices}:
            choices.append(e.sampler)
        for s in sorted(choices, key=lambda s: -s.evaluations):
            hours = [c.gpu_hours for c in sampling_costs(e, rates, measured_on, s)]
            out.append((exp, s, None if None in hours else sum(hours), s.label == e.sampler.label))
    return out, measured_on


def sampler_markdown(choices: list[tuple[str, Sampler, float | None, bool]]) -> str:
    lines = ["| experiment | sampler | network evals per clip | sampling GPU-hours | |", "|---|---|---|---|---|"]
    for exp, s, hours, configured in choices:
        note = ", ".join(n for n, on in (("configured", configured), ("the paper's", s.label == PAPER_SAMPLER.label))
                         if on)
        shown = "not measured" if hours is None else f"{hours:,.1f}"
        lines.append(f"| {exp} | {s.label} | {s.evaluations} | {shown} | {note} |")
    return "\n".join(lines) + "\n"


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
