"""The DAG of a config: for a validated config, every output path, the checkpoint each stage reads,
the sampler, the options and resources of every job, and the rows of the paper table. (The
`pvdm plan` command is another thing: the GPU-hours a config costs, ``pvdm.report.cost``.)

This is the one place that decides these things. The Snakemake rules declare their inputs and
outputs from ``Layout`` and ask ``Dag`` / ``ExperimentDag`` for everything else; ``pvdm publish``
and the CLI ask the same objects. Paths are relative to the working directory of the run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pvdm.diffusion.samplers import Sampler


def shard_name(shard: int, shards: int) -> str:
    """``002of008``: shard 2 of 8 of a sample set."""
    return f"{shard:03d}of{shards:03d}"


def parse_shard(name: str) -> tuple[int, int]:
    k, _, n = name.partition("of")
    if not (k.isdigit() and n.isdigit()) or not 0 <= int(k) < int(n):
        raise ValueError(f"shard {name!r}: expected KofN with 0 <= K < N, e.g. 002of008")
    return int(k), int(n)


class _Keep(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def fill(template: str, **wildcards: Any) -> str:
    """``template`` with some wildcards filled and the others kept (``{exp}`` stays for Snakemake)."""
    return template.format_map(_Keep(wildcards))


class Layout:
    """Path templates of every stage (``{exp}``, ``{kind}``, ``{frames}``, ``{dataset}`` wildcards)."""

    raw = "results/raw/{dataset}"
    download = "results/raw/{dataset}/download.json"
    data = "results/{exp}/data"
    manifest = "results/{exp}/data/manifest.json"
    stage1 = "results/{exp}/autoencoder/stage1"
    gan = "results/{exp}/autoencoder/gan"
    released = "results/{exp}/released"
    diffusion = "results/{exp}/diffusion"
    samples = "results/{exp}/samples/{kind}{frames}"
    sample_clips = "results/{exp}/samples/{kind}{frames}/clips"
    sample_card = "results/{exp}/samples/{kind}{frames}/samples.json"
    sample_shard = "results/{exp}/samples/{kind}{frames}/shards/{shard}.npy"  # shard: "002of008"
    metrics = "results/{exp}/metrics"
    fvd = "results/{exp}/metrics/fvd{frames}_{kind}.json"
    recon = "results/{exp}/metrics/recon.json"
    inception = "results/{exp}/metrics/is{frames}_model.json"
    feature_cache = "results/{exp}/metrics/feature_cache"
    logs = "results/{exp}/logs"
    benchmarks = "results/{exp}/benchmarks"  # Snakemake's per-job timings (benchmarks/ holds the scripts)
    download_log = "results/logs/download_{dataset}.log"
    paper = "results/paper"
    table = "results/paper/table1"
    figure = "results/paper/figures/{exp}_{figure}_{frames}.png"


TABLE_FILES = tuple(f"{Layout.table}.{ext}" for ext in ("md", "csv", "tex", "json"))
FIGURES = ("autoencoder", "diffusion", "samples", "compare")
# Stages whose jobs may run several processes (DDP, one per GPU); the others use one device
# each and spread over devices by jobs (sampling shards).
MULTI_PROCESS_STAGES = {"train_autoencoder": "train-autoencoder", "finetune_gan": "finetune-gan",
                        "train_diffusion": "train-diffusion"}  # stage -> its pvdm command
SAMPLE_KINDS = ("model", "untrained")  # the trained U-Net, and its initialisation as a baseline
HELD_OUT_SPLIT = "test"  # the data split reconstruction metrics and the comparison figure read
# Snakemake wildcard constraints of the layout's templates
WILDCARDS = {"kind": "|".join(SAMPLE_KINDS), "frames": "[0-9]+", "shard": "[0-9]+of[0-9]+"}
# How Slurm jobs ask for GPUs (site settings, read where the DAG is built: README, "Slurm").
GPU_REQUEST_ENV, GPU_MODEL_ENV = "PVDM_SLURM_GPU_REQUEST", "PVDM_SLURM_GPU_MODEL"
GPU_REQUESTS = ("gpus", "gres")
# Resources of the Slurm plugin that Dag.resources sets per job (absent when None)
SLURM_KEYS = ("gpu", "gpu_model", "gres", "cpus_per_gpu", "cpus_per_task", "tasks_per_gpu", "nodes", "tasks", "mpi",
              "slurm_extra")


def gpu_request(gpus: int, nodes: int, env: Mapping[str, str]) -> dict[str, Any]:
    """The plugin resources asking for ``gpus`` GPUs on each of ``nodes`` nodes, one form only:
    PVDM_SLURM_GPU_REQUEST=gpus (default): ``--gpus=N`` (one node; ``gpu``) or ``--gpus-per-node=N``
    (several; ``slurm_extra``), for clusters that take a GPU count; gres: ``--gres=gpu:N`` (per node),
    for clusters whose scheduler rejects ``--gpus``. PVDM_SLURM_GPU_MODEL (e.g. a100) names the GPU
    type in either form (``--gpus=a100:N``, ``--gres=gpu:a100:N``). No GPUs: no GPU flag at all."""
    how, model = env.get(GPU_REQUEST_ENV) or "gpus", env.get(GPU_MODEL_ENV) or None
    if how not in GPU_REQUESTS:
        raise ValueError(f"{GPU_REQUEST_ENV}={how!r}: expected gpus (sbatch --gpus=N, the default) or gres "
                         "(--gres=gpu:N, for clusters that reject --gpus)")
    if model is not None and not re.fullmatch(r"[A-Za-z0-9_.]+", model):
        raise ValueError(f"{GPU_MODEL_ENV}={model!r}: expected a GPU type as the cluster names it (e.g. a100)")
    if not gpus:
        return {}
    count = f"{model}:{gpus}" if model else str(gpus)
    if how == "gres":
        # --gres counts per node; tasks_per_gpu 0 stops the plugin from turning `tasks` into --ntasks-per-gpu
        return {"gres": f"gpu:{count}"} | ({"tasks_per_gpu": 0} if nodes > 1 else {})
    if nodes > 1:  # --gpus counts per job, which Slurm may spread unevenly over the nodes
        return {"slurm_extra": f"--gpus-per-node={count}"}
    return {"gpu": gpus, "gpu_model": model}


@dataclass(frozen=True)
class ExperimentDag:
    """What one experiment (``experiments.<id>`` of a validated config) runs and writes."""

    id: str
    cfg: dict[str, Any]

    def path(self, template: str, **wildcards: Any) -> str:
        return template.format(exp=self.id, **wildcards)

    # --- what the experiment has ----------------------------------------------------------------

    @property
    def released(self) -> bool:
        """Sampled from the released PVDM checkpoints (imported), not trained here."""
        return "released" in self.cfg

    @property
    def trains_autoencoder(self) -> bool:
        return not self.released and "stage1" in self.cfg.get("autoencoder", {})

    @property
    def has_gan(self) -> bool:
        return not self.released and "gan" in self.cfg.get("autoencoder", {})

    @property
    def samples(self) -> bool:
        return "sampling" in self.cfg and (self.released or "diffusion" in self.cfg)

    @property
    def evaluates(self) -> bool:
        return "eval" in self.cfg

    @property
    def clip_length(self) -> int:
        """Frames of one generated clip: the autoencoder's (the released PVDM models have 16)."""
        return self.cfg.get("autoencoder", {}).get("model", {}).get("frames", 16)

    @property
    def sampler(self) -> Sampler:
        from pvdm.diffusion.samplers import Sampler  # torch: not at import, the Snakefile reads this module

        return Sampler.from_config(self.cfg["sampling"]["sampler"])

    @property
    def long_frames(self) -> int | None:
        """Frames of the long videos (FVD-128), or None when the experiment makes none."""
        s = self.cfg["sampling"]
        if s["long_videos"] and self.cfg["data"]["long_frames"]:
            return s["long_frames"]
        return None

    @property
    def inception_score(self) -> bool:
        """The IS of the model's clips is computed (eval.c3d_dir names the C3D archives)."""
        return self.samples and self.evaluates and self.cfg["eval"]["c3d_dir"] is not None

    def c3d_archives(self) -> list[str]:
        """The two archives of the UCF-101 C3D in eval.c3d_dir; missing ones are a config error."""
        from pvdm.eval.c3d import MEAN_NPZ, WEIGHTS_NPZ, missing_archives_message

        folder = Path(self.cfg["eval"]["c3d_dir"])
        paths = [folder / WEIGHTS_NPZ, folder / MEAN_NPZ]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise ValueError(f"experiments.{self.id}.eval.c3d_dir: " + missing_archives_message(missing, folder))
        return [str(p) for p in paths]

    @property
    def untrained_baseline(self) -> bool:
        return self.samples and not self.released and self.cfg["sampling"]["untrained_baseline"]

    # --- checkpoints each stage reads -----------------------------------------------------------

    @property
    def autoencoder_checkpoint(self) -> str:
        """The autoencoder that diffusion, sampling and reconstruction metrics use."""
        if self.released:
            return f"{self.path(Layout.released)}/autoencoder.pt"
        return f"{self.path(Layout.gan)}/model.pt"

    def diffusion_checkpoint(self, kind: str) -> str:
        """The U-Net a sample job uses: EMA or raw weights (sampling.ema), or the untrained init."""
        if self.released:
            return f"{self.path(Layout.released)}/diffusion.pt"
        if kind == "untrained":
            return f"{self.path(Layout.diffusion)}/untrained.pt"
        return f"{self.path(Layout.diffusion)}/{'ema' if self.cfg['sampling']['ema'] else 'model'}.pt"

    def weights_label(self, kind: str) -> str:
        """Which U-Net weights make a sample set, for its card: untrained, ema or raw (sampling.ema;
        for released files it says which weights the file holds)."""
        if kind == "untrained" and not self.released:
            return "untrained"
        return "ema" if self.cfg["sampling"]["ema"] else "raw"

    def checkpoints_to_publish(self) -> list[str]:
        """The checkpoints a reader needs to sample again without training (what `sample` reads)."""
        if self.released:
            return [self.autoencoder_checkpoint, self.diffusion_checkpoint("model")]
        paths = [self.autoencoder_checkpoint] if self.has_gan else []
        if "diffusion" in self.cfg:
            paths.append(self.diffusion_checkpoint("model"))
            if self.untrained_baseline:
                paths.append(self.diffusion_checkpoint("untrained"))
        return paths

    # --- sampling and evaluation ----------------------------------------------------------------

    def sample_runs(self) -> list[tuple[str, int]]:
        """(kind, frames) of every sample set: clips of the model (and of the untrained baseline,
        clips only: long videos of noise cost I3D time and tell nothing more), long videos."""
        if not self.samples:
            return []
        t = self.clip_length
        runs = [("model", t)] + ([("untrained", t)] if self.untrained_baseline else [])
        if self.long_frames:
            runs.append(("model", self.long_frames))
        return runs

    def sample_count(self, frames: int) -> int:
        s = self.cfg["sampling"]
        return s["num_videos"] if frames == self.clip_length else s["long_videos"]

    def fvd_count(self, frames: int) -> int:
        """Clips per FVD: eval.fvd_videos, and for long videos at most the number sampled."""
        n = self.cfg["eval"]["fvd_videos"]
        return n if frames == self.clip_length else min(n, self.cfg["sampling"]["long_videos"])

    def floor_option(self, frames: int) -> str:
        """``--floor-videos K`` of an FVD job (eval.floor_videos, at most the FVD's N), or nothing."""
        k = self.cfg["eval"]["floor_videos"]
        return f"--floor-videos {min(k, self.fvd_count(frames))}" if k else ""

    def real_store(self, frames: int) -> str:
        """Real clips of FVD-<frames>: the configured split for clips, the long store for videos."""
        data = self.path(Layout.data)
        if frames <= self.cfg["data"]["clip_frames"]:
            return f"{data}/{self.cfg['eval']['real_split']}"
        return f"{data}/train_long"

    def metric_files(self) -> list[str]:
        """Every metric file of the experiment: reconstruction, then one FVD per sample set."""
        if not self.evaluates:
            return []
        out = [self.path(Layout.recon)]
        out += [self.path(Layout.fvd, kind=k, frames=f) for k, f in self.sample_runs()]
        if self.inception_score:
            out.append(self.path(Layout.inception, frames=self.clip_length))
        return out

    @property
    def has_figures(self) -> bool:
        return self.has_gan and self.samples

    def figure_files(self) -> list[str]:
        if not self.has_figures:
            return []
        return [self.path(Layout.figure, figure=f, frames=self.clip_length) for f in FIGURES]

    def table_rows(self) -> list[dict[str, Any]]:
        """Rows of the paper table: ours (or released), the untrained baseline, the real-vs-real floor."""
        if not self.evaluates:
            return []
        dataset, t = self.cfg["data"]["dataset"], self.clip_length
        label = self.cfg.get("label", self.id)
        fvd: dict[str, str] = {}
        if self.samples:
            fvd["fvd16"] = self.path(Layout.fvd, kind="model", frames=t)
            if self.long_frames:
                fvd["fvd128"] = self.path(Layout.fvd, kind="model", frames=self.long_frames)
        row: dict[str, Any] = {"id": self.id, "label": label, "dataset": dataset}
        row["kind"] = "released" if self.released else "ours"
        if self.cfg["paper_variant"]:
            row["paper_variant"] = self.cfg["paper_variant"]
        if self.inception_score:
            row["inception"] = self.path(Layout.inception, frames=t)
        rows = [{**row, **fvd, "recon": self.path(Layout.recon)}]
        if self.untrained_baseline:
            rows.append({
                "id": f"{self.id}_untrained", "label": f"{label}: untrained U-Net", "dataset": dataset,
                "kind": "untrained", "fvd16": self.path(Layout.fvd, kind="untrained", frames=t),
            })
        if fvd:
            rows.append({
                "id": f"{self.id}_floor", "label": f"real vs real ({dataset})", "dataset": dataset,
                "kind": "real_floor", **fvd,
            })
        return rows

    def check_sampler(self) -> None:
        """The sampler's steps and time steps, when the DAG is built instead of in the sampling jobs. DDIM's
        range is the schema's; the others need the noise schedule (a multistep solver's log-SNR steps
        can collapse onto one integer time step), so torch is imported only for them."""
        if not self.samples or self.cfg["sampling"]["sampler"]["name"] == "ddim":
            return
        try:
            self.sampler  # noqa: B018 - builds and checks it
        except ValueError as e:
            raise ValueError(f"experiments.{self.id}.sampling.sampler: {e}") from None

    # --- what a job asks for ------------------------------------------------------------------------

    def job(self, stage: str) -> dict[str, int]:
        """Snakemake resources of a stage's jobs (resources.<stage> of the config): gpu and nproc
        (GPUs and processes per node: DDP when above 1), nodes, cpus_per_gpu, mem_mb, runtime and
        threads (per node)."""
        r = self.cfg["resources"][stage]
        key = f"experiments.{self.id}.resources.{stage}"
        multi = stage in MULTI_PROCESS_STAGES
        if not multi and (r["gpus"] > 1 or r["processes"] > 1 or r["nodes"] > 1):
            raise ValueError(
                f"{key}: gpus {r['gpus']}, processes {r['processes']}, nodes {r['nodes']}: "
                f"{stage} jobs run one process on one device each"
                + ("; spread sampling over GPUs with resources.sample.shards" if stage == "sample" else "")
            )
        nproc = max(r["gpus"], r["processes"]) if multi else 1
        if r["gpus"] > 1 and r["processes"] not in (1, r["gpus"]):
            raise ValueError(f"{key}: processes must be 1 or equal to gpus ({r['gpus']}): one process per GPU")
        if multi:
            self._check_batch_splits(stage, r["nodes"], nproc)
        threads = r["cpus_per_gpu"] * r["gpus"] if r["gpus"] else r["cpus"]
        return {"gpu": r["gpus"], "cpus_per_gpu": r["cpus_per_gpu"], "mem_mb": r["mem_mb"], "runtime": r["runtime"],
                "threads": threads, "nproc": nproc, "nodes": r["nodes"]}

    def _check_batch_splits(self, stage: str, nodes: int, nproc: int) -> None:
        """The global batch of a training stage splits evenly over its processes (each rank takes
        batch / world size): checked when the DAG is built, not after the allocation started."""
        section = {"train_autoencoder": ("autoencoder", "stage1"), "finetune_gan": ("autoencoder", "gan"),
                   "train_diffusion": ("diffusion", "train")}[stage]
        cfg = self.cfg.get(section[0], {}).get(section[1])
        world = nodes * nproc
        if cfg is None or self.released or cfg["batch_size"] % world == 0:
            return
        r = self.cfg["resources"][stage]
        per_node = f"gpus {r['gpus']}" if r["gpus"] else f"processes {r['processes']}"
        raise ValueError(
            f"experiments.{self.id}.{'.'.join(section)}.batch_size = {cfg['batch_size']} does not split over "
            f"{world} processes (resources.{stage}: nodes {nodes} x {per_node}); choose a multiple of {world}")

    def launcher(self, stage: str) -> str:
        """The start of a training job's command line: ``pvdm`` with the job's threads and processes
        per node; on several nodes, one launcher per node through ``srun`` (inside the allocation,
        where the Slurm jobstep does not wrap the command: ``mpi`` in ``Dag.resources``). Node rank
        and rendezvous come from Slurm's variables (pvdm.train.launch)."""
        j = self.job(stage)
        pvdm = f"pvdm --threads {j['threads']} --nproc {j['nproc']}"
        if j["nodes"] == 1:
            return pvdm
        n = j["nodes"]
        return (f"srun --nodes={n} --ntasks={n} --ntasks-per-node=1 --cpus-per-task={j['threads']} "
                f"{pvdm} --nnodes {n}")

    def slurm_resources(self, stage: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        """Snakemake resources (snakemake-executor-plugin-slurm's keys) asking for a job's GPUs and
        nodes: ``gpu`` (and ``cpus_per_gpu``) for one node, ``nodes``/``tasks``/``mpi`` for several,
        the GPUs in the form the site takes (``gpu_request``)."""
        j = self.job(stage)
        gpus, nodes = j["gpu"], j["nodes"]
        out: dict[str, Any] = gpu_request(gpus, nodes, os.environ if env is None else env)
        if nodes > 1:
            # one task per node, each a launcher of nproc workers; the plugin's jobstep runs the
            # command as it is (mpi), which starts the tasks itself (srun, in `launcher`)
            extra = " ".join(filter(None, ["--ntasks-per-node=1", out.pop("slurm_extra", None)]))
            out |= {"nodes": nodes, "tasks": nodes, "mpi": "srun", "slurm_extra": extra,
                    "cpus_per_task": j["threads"]}
        elif gpus and "gpu" in out:
            out["cpus_per_gpu"] = j["cpus_per_gpu"]
        elif gpus:  # --gres: CPUs per task, as --cpus-per-gpu needs a --gpus count on some Slurm versions
            out["cpus_per_task"] = j["threads"]
        return out

    def released_files(self) -> dict[str, str]:
        """The original-format checkpoints import_released converts (released.autoencoder / .diffusion)."""
        return {key: self.cfg["released"][key] for key in ("autoencoder", "diffusion")}

    def recon_options(self) -> str:
        """Options of `pvdm recon-metrics`: the held-out split, the clip count, R-FVD on or off."""
        ev = self.cfg["eval"]
        return (f"--split {HELD_OUT_SPLIT} --num-videos {ev['recon_videos']} --bootstrap {ev['bootstrap']}"
                + ("" if ev["rfvd"] else " --no-rfvd"))

    def fvd_options(self, kind: str, frames: int) -> str:
        """Options of `pvdm fvd` for one sample set: real and generated clips, N, the protocol, the cache."""
        ev = self.cfg["eval"]
        return " ".join(part for part in [
            f"--real {self.real_store(frames)} --fake {self.path(Layout.sample_clips, kind=kind, frames=frames)}",
            f"--frames {frames} --num-videos {self.fvd_count(frames)} --selector {ev['real_selector']}",
            f"--seed {ev['seed']} --covariance {ev['covariance']} --resize {ev['resize']}",
            f"--bootstrap {ev['bootstrap']}", self.floor_option(frames), f"--dataset {self.cfg['data']['dataset']}",
            f"--split {ev['real_split']} --cache-dir {self.path(Layout.feature_cache)}",
        ] if part)

    def inception_options(self, frames: int) -> str:
        """Options of `pvdm is`: the model's clips, N, splits, the C3D archives, the dataset."""
        ev = self.cfg["eval"]
        return (f"--fake {self.path(Layout.sample_clips, kind='model', frames=frames)} "
                f"--num-videos {self.fvd_count(frames)} --frames {frames} --splits {ev['is_splits']} "
                f"--c3d-dir {ev['c3d_dir']} --dataset {self.cfg['data']['dataset']}")

    def numerics(self, stage: str) -> str:
        """What changes a job's numbers besides its settings and inputs: the device kind, the process
        count (all nodes) and, on CPU, the thread count (resources.<stage>), as JSON. A rule param, so changing it
        reruns the job; the job's identity (state.pt, sample cards) records what it ran with."""
        j = self.job(stage)
        return json.dumps({"device": "cuda" if j["gpu"] else "cpu", "processes": j["nodes"] * j["nproc"],
                           "threads": None if j["gpu"] else j["threads"]}, sort_keys=True)

    def shards(self, frames: int) -> list[str]:
        """Names of the sampling jobs of a sample set (resources.sample.shards, at most one per video)."""
        n = min(self.cfg["resources"]["sample"]["shards"], max(1, self.sample_count(frames)))
        return [shard_name(k, n) for k in range(n)]

    # --- what a job depends on --------------------------------------------------------------------

    def settings(self, *sections: str) -> str:
        """The (dotted) config sections a job reads, as JSON; passed to the job as a param, so
        changing them reruns exactly the jobs that read them (Snakemake's params trigger)."""
        picked: dict[str, Any] = {"seed": self.cfg["seed"]}
        for dotted in sections:
            *parents, leaf = dotted.split(".")
            src, dst = self.cfg, picked
            for key in parents:
                src, dst = src[key], dst.setdefault(key, {})
            dst[leaf] = src[leaf]
        return json.dumps(picked, sort_keys=True)

    def raw_inputs(self) -> list[str]:
        """The download rule's output when the dataset has no user-given root, else nothing; for
        your own videos, the files (and frame folders) the data stage will read."""
        data = self.cfg["data"]
        if data["dataset"] == "videos":  # every listed input: a changed, added or removed video reruns prepare
            if not data["root"]:
                raise ValueError(f"experiment {self.id}: dataset videos needs data.root (your folder or CSV of videos)")
            from pvdm.data.videos import input_paths

            return input_paths(Path(data["root"]))
        if data["dataset"] == "moving_mnist" or data["root"]:
            return []
        return [Layout.download.format(dataset=data["dataset"])]

    def released_config_args(self) -> str:
        """--autoencoder-config / --diffusion-config for original-format files that are not the paper's."""
        rel = self.cfg["released"]
        args = []
        for key in ("autoencoder_config", "diffusion_config"):
            if rel[key]:
                args.append(f"--{key.replace('_', '-')} {shlex.quote(json.dumps(rel[key]))}")
        return " ".join(args)

    def targets(self) -> list[str]:
        """What the default target builds of this experiment: as far as its config goes."""
        out = [self.path(Layout.manifest)]
        if self.trains_autoencoder:
            out.append(f"{self.path(Layout.stage1)}/model.pt")
        if self.has_gan or self.released:
            out.append(self.autoencoder_checkpoint)
        return out + self.figure_files()


class Dag:
    """The plan of a whole validated config: its experiments, the default targets, the table."""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.experiments = {exp: ExperimentDag(exp, cfg) for exp, cfg in config["experiments"].items()}
        self.selected = list(config.get("targets") or self.experiments)
        unknown = [e for e in self.selected if e not in self.experiments]
        if unknown:
            raise ValueError(f"targets {unknown} are not experiments of the config (have {sorted(self.experiments)})")
        for e in self.experiments.values():
            e.check_sampler()

    def __getitem__(self, exp: str) -> ExperimentDag:
        return self.experiments[exp]

    def _chosen(self) -> list[ExperimentDag]:
        return [self.experiments[e] for e in self.selected]

    def table_rows(self) -> list[dict[str, Any]]:
        return [row for e in self._chosen() for row in e.table_rows()]

    def table_inputs(self) -> list[str]:
        return [path for e in self._chosen() for path in e.metric_files()]

    def checkpoints(self) -> list[str]:
        """The checkpoints the chosen experiments' samples and metrics come from. The default target
        asks for them: Snakemake does not rerun a job whose outputs exist when an input is missing, so a
        checkpoint lost in a killed retraining must be asked for directly to be rebuilt; everything drawn
        from it then reruns as its input changed. (The table's own target does not: after
        `pvdm pull-metrics` it rebuilds the table from the metrics alone.)"""
        return [path for e in self._chosen() if e.evaluates for path in e.checkpoints_to_publish()]

    def final_targets(self) -> list[str]:
        """The default target: the paper table and figures when the experiments go that far, else
        as far as each experiment's config goes (data, autoencoder, ...)."""
        targets = [t for e in self._chosen() for t in e.targets()]
        if any(e.evaluates for e in self._chosen()):
            targets += [f"{Layout.table}.md", *self.checkpoints()]
        return list(dict.fromkeys(targets))

    # Snakemake adapters: callables of a job's wildcards, for a rule's `threads:` and `resources:`.

    def resources(self, stage: str) -> dict[str, Any]:
        """``cpu_threads`` is the job's thread count from the config, which the rule passes to
        ``pvdm --threads``: Snakemake's ``{threads}`` shrinks to ``--cores``, and on CPU the
        numbers would follow it. ``launch`` is the start of a training command (``launcher``); the
        Slurm keys (``slurm_resources``) ask for the GPUs and nodes. A key whose value is None is
        left out of the job's resources."""
        keys = {"mem_mb": "mem_mb", "runtime": "runtime", "nproc": "nproc", "cpu_threads": "threads"}
        out: dict[str, Any] = {name: (lambda w, key=key: self[w.exp].job(stage)[key]) for name, key in keys.items()}
        for name in SLURM_KEYS:
            out[name] = lambda w, name=name: self[w.exp].slurm_resources(stage).get(name)
        if stage in MULTI_PROCESS_STAGES:
            out["launch"] = lambda w: self[w.exp].launcher(stage)
        return out

    def threads(self, stage: str) -> Any:
        return lambda w: self[w.exp].job(stage)["threads"]

    def download_settings(self, dataset: str) -> str:
        for e in self.experiments.values():
            if e.cfg["data"]["dataset"] == dataset:
                data = {k: e.cfg["data"][k] for k in ("dataset", "download")}
                return json.dumps({"data": data}, sort_keys=True)
        raise ValueError(f"no experiment uses dataset {dataset}")
