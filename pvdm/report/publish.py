"""Version published artifacts with DVC (`pvdm publish`) and fetch metric files back (`pvdm pull-metrics`).

Snakemake owns the DAG; DVC only stores bytes. `publish` runs `dvc add` on what a reader needs
(raw data, the chosen checkpoints, metric JSONs, the paper table, loss curves as CSV for
`dvc plots`), then optionally `git add`s the pointers and `dvc push`es the data. The dvc CLI is
called as a subprocess: it is DVC's stable interface. `dvc add` never changes what a file holds, but
it re-links the file from the cache and so gives it a new mtime, which Snakemake would read as "this
checkpoint is newer than its samples"; publish therefore puts every modification time back.

Paths are relative to the repository root (``root``), like the Snakemake targets.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pvdm.dag import TABLE_FILES, Layout
from pvdm.dag import Dag as ExperimentsDag
from pvdm.eval.records import read_json_object
from pvdm.utils.io import atomic_write_text

log = logging.getLogger("pvdm.report.publish")

CATEGORIES = ("raw", "checkpoints", "metrics", "table", "plots")
TABLE_METRICS = f"{Layout.table}.json"  # `cache: false` in dvc.yaml: git holds it, for `dvc metrics diff`
PAPER_STAGE = "paper"
PLOTS_DIR = f"{Layout.paper}/plots"

# Loss curves for `dvc plots`: (CSV name part, training log, loss key of that log).
LOSS_LOGS = (
    ("autoencoder_stage1", f"{Layout.stage1}/log.jsonl", "g/total"),
    ("autoencoder_gan", f"{Layout.gan}/log.jsonl", "g/total"),
    ("diffusion", f"{Layout.diffusion}/log.jsonl", "loss"),
)


class DvcError(RuntimeError):
    """A dvc or git command failed, or the repository is not set up for DVC."""


@dataclass
class PublishPlan:
    """What one `pvdm publish` does: `dvc add` these paths, `dvc commit` the paper stage or not."""

    add: list[str] = field(default_factory=list)
    commit_stage: bool = False
    plots: list[tuple[str, str, str]] = field(default_factory=list)  # (log, loss key, csv) to convert


# --- subprocess helpers ---------------------------------------------------------------------------


def dvc_executable() -> str:
    """The dvc next to this Python (the project's virtualenv), else the one on PATH."""
    here = Path(sys.executable).parent / "dvc"
    if here.is_file():
        return str(here)
    found = shutil.which("dvc")
    if found is None:
        raise DvcError("dvc is not installed: `pip install dvc==3.67.1` (it is a dependency of pvdm)")
    return found


def _env() -> dict[str, str]:
    # Quiet and offline: no usage report even in a clone whose .dvc/config predates core.analytics.
    return {**os.environ, "DVC_NO_ANALYTICS": "1"}


def _run(cmd: Sequence[str], root: Path, capture: bool = False) -> str:
    """Run a command in ``root``; DVC's messages go to our stderr, and its ERROR lines into the exception."""
    (log.debug if capture else log.info)("$ %s", shlex.join(cmd))  # queries at debug level
    p = subprocess.run(list(cmd), cwd=root, env=_env(), text=True, stdout=subprocess.PIPE if capture else None,
                       stderr=subprocess.PIPE)
    if p.stderr:
        sys.stderr.write(p.stderr)
    if p.returncode != 0:
        errors = [ln for ln in p.stderr.splitlines() if "ERROR" in ln] or p.stderr.splitlines()[-3:]
        raise DvcError(f"`{shlex.join(cmd)}` failed (exit {p.returncode}): " + " | ".join(errors))
    return p.stdout or ""


def run_dvc(args: Sequence[str], root: Path, capture: bool = False) -> str:
    return _run([dvc_executable(), *args], root, capture)


def run_git(args: Sequence[str], root: Path, capture: bool = False) -> str:
    git = shutil.which("git")
    if git is None:
        raise DvcError("git is not installed (DVC keeps its pointers in git)")
    return _run([git, *args], root, capture)


def check_dvc_repo(root: Path) -> None:
    if not (root / ".dvc").is_dir():
        raise DvcError(f"{root.resolve()}: not a DVC repository (no .dvc/ folder); run `dvc init` in the git "
                       "checkout first and commit .dvc/config")


# --- what to publish ------------------------------------------------------------------------------


def selected_experiments(cfg: dict[str, Any], names: Sequence[str] | None = None) -> list[str]:
    """The experiments the default Snakemake target builds (config `targets`, else all), or ``names``."""
    plan = ExperimentsDag(cfg)
    for name in names or []:
        if name not in plan.experiments:
            raise ValueError(f"experiment {name!r} is not in the config (have: {', '.join(sorted(plan.experiments))})")
    return list(names) if names else plan.selected


def metric_paths(exp: str, root: Path) -> list[str]:
    """Metric JSONs of one experiment (the files in its metrics folder), each checked to be a JSON object."""
    folder = root / Layout.metrics.format(exp=exp)
    found = sorted(folder.glob("*.json"))
    if not found:
        raise FileNotFoundError(f"{folder.relative_to(root)}/: no metric JSON files; run "
                                f"`snakemake --cores all {Layout.table}.md` first")
    for path in found:
        read_json_object(path)
    return [str(p.relative_to(root)) for p in found]


def raw_paths(exps: Sequence[str], cfg: dict[str, Any], root: Path) -> list[str]:
    """results/raw/<dataset> of the experiments' datasets, where present (Moving MNIST has none)."""
    paths = []
    for exp in exps:
        path = Layout.raw.format(dataset=cfg["experiments"][exp]["data"]["dataset"])
        if (root / path).is_dir() and path not in paths:
            paths.append(path)
    return paths


def paper_stage_outputs(root: Path) -> set[str]:
    """Outputs of the `paper` stage of dvc.yaml (empty when there is no such stage)."""
    path = root / "dvc.yaml"
    if not path.is_file():
        return set()
    stage = (yaml.safe_load(path.read_text()) or {}).get("stages", {}).get(PAPER_STAGE)
    if not stage:
        return set()
    outs = set()
    for key in ("outs", "metrics", "plots"):
        for item in stage.get(key, []):
            outs.add(next(iter(item)) if isinstance(item, dict) else item)
    return outs


def plan_publish(root: Path, cfg: dict[str, Any], exps: Sequence[str], categories: Iterable[str],
                 explicit: bool = True) -> PublishPlan:
    """Decide what to publish. A category asked for explicitly must find its files; in the default
    (everything) mode raw data and loss logs are published only when present."""
    categories = set(categories)
    unknown = categories - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown categories {sorted(unknown)} (have: {', '.join(CATEGORIES)})")
    plan = PublishPlan()
    missing: list[str] = []
    exp_plans = ExperimentsDag(cfg).experiments
    exp_cfgs = {exp: cfg["experiments"][exp] for exp in exps}
    if "raw" in categories:
        raw = raw_paths(exps, cfg, root)
        if explicit and not raw:
            datasets = sorted({c["data"]["dataset"] for c in exp_cfgs.values()})
            raise FileNotFoundError(f"no raw data to publish: none of {', '.join(f'results/raw/{d}/' for d in datasets)} "
                                    "exists (Moving MNIST is generated; a user-given data.root is not published)")
        plan.add += raw
    if "checkpoints" in categories:
        for exp in exps:
            for path in exp_plans[exp].checkpoints_to_publish():
                (plan.add if (root / path).is_file() else missing).append(path)
    if "metrics" in categories:
        evaluated = [exp for exp, c in exp_cfgs.items() if "eval" in c]
        if explicit and not evaluated:
            raise ValueError(f"no experiment among {', '.join(exps)} has an `eval` section: there are no metrics")
        for exp in evaluated:
            plan.add += metric_paths(exp, root)
    if "table" in categories and explicit and not any("eval" in c for c in exp_cfgs.values()):
        raise ValueError(f"no experiment among {', '.join(exps)} has an `eval` section: there is no paper table")
    if "table" in categories and any("eval" in c for c in exp_cfgs.values()):
        missing += [p for p in TABLE_FILES if not (root / p).is_file()]
        if set(TABLE_FILES) <= paper_stage_outputs(root):
            plan.commit_stage = True  # outputs of a dvc.yaml stage cannot be `dvc add`ed; `dvc commit` caches them
        else:
            plan.add += list(TABLE_FILES)
    if missing:
        raise FileNotFoundError("missing files: " + ", ".join(missing) +
                                f"; build them first (`snakemake --cores all {missing[0]}`) or choose what to "
                                "publish (--metrics-only, --checkpoints, --raw, --table, --plots)")
    if "plots" in categories:
        for exp in exps:
            for name, template, key in LOSS_LOGS:
                log_path = template.format(exp=exp)
                if (root / log_path).is_file():
                    plan.plots.append((log_path, key, f"{PLOTS_DIR}/{exp}_{name}_loss.csv"))
        if explicit and not plan.plots:
            raise FileNotFoundError("no training logs to plot (results/<exp>/{autoencoder/stage1,autoencoder/gan,"
                                    f"diffusion}}/log.jsonl) for {', '.join(exps)}")
        if plan.plots:
            plan.add.append(PLOTS_DIR)
    if not plan.add and not plan.commit_stage:
        raise FileNotFoundError(f"nothing to publish for {', '.join(exps)}")
    return plan


# --- loss curves for `dvc plots` ------------------------------------------------------------------


def loss_curve(path: Path, key: str) -> list[tuple[int, float]]:
    """(step, loss) from a JSON-lines training log; lines without ``key`` (eval rows) are skipped.
    A resumed run logs the steps after its last checkpoint again: the latest line of a step wins."""
    by_step: dict[int, float] = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON line ({e})") from None
            if key in row:
                if "step" not in row:
                    raise ValueError(f"{path}:{lineno}: a '{key}' row without 'step'")
                by_step[int(row["step"])] = float(row[key])
    if not by_step:
        raise ValueError(f"{path}: no '{key}' values")
    return sorted(by_step.items())


def write_loss_csv(log_path: Path, key: str, out: Path) -> int:
    """Write ``out`` as CSV with columns step,loss (what dvc.yaml's plots read); returns the row count."""
    curve = loss_curve(log_path, key)
    atomic_write_text(out, "step,loss\n" + "".join(f"{step},{loss!r}\n" for step, loss in curve))
    return len(curve)


# --- mtimes ---------------------------------------------------------------------------------------


def _files(root: Path, paths: Iterable[str]) -> list[Path]:
    out = []
    for p in paths:
        path = root / p
        out += sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    return out


def snapshot_mtimes(root: Path, paths: Iterable[str]) -> dict[Path, tuple[int, int]]:
    return {f: (f.stat().st_atime_ns, f.stat().st_mtime_ns) for f in _files(root, paths) if f.is_file()}


def restore_mtimes(times: dict[Path, tuple[int, int]]) -> None:
    for f, ns in times.items():
        if f.exists():
            os.utime(f, ns=ns)


# --- publish / pull -------------------------------------------------------------------------------


def _git_changed(root: Path, paths: Sequence[str]) -> list[str]:
    """Those of ``paths`` that git sees as new or modified (not ignored, not unchanged)."""
    if not paths:
        return []
    out = run_git(["status", "--porcelain", "--untracked-files=all", "--", *paths], root, capture=True)
    changed = {line[3:].strip() for line in out.splitlines() if line.strip()}
    return [p for p in paths if p in changed]


def _has_default_remote(root: Path) -> bool:
    p = subprocess.run([dvc_executable(), "remote", "default"], cwd=root, env=_env(), capture_output=True)
    return p.returncode == 0  # exit 1 and "No default remote set" otherwise


def _git_ignored(root: Path, path: str) -> bool:
    git = shutil.which("git")
    return git is not None and subprocess.run([git, "check-ignore", "-q", path], cwd=root).returncode == 0


def publish(root: Path, cfg: dict[str, Any], exps: Sequence[str], categories: Iterable[str], *,
            explicit: bool = True, remote: tuple[str, str] | None = None, push: bool = False,
            git_add: bool = False, dry_run: bool = False) -> list[str]:
    """`dvc add` the planned artifacts (mtimes kept), commit the paper stage, optionally `git add` the
    pointers and `dvc push`. Returns the files to commit to git."""
    root = Path(root)
    check_dvc_repo(root)
    plan = plan_publish(root, cfg, exps, categories, explicit)
    if push and remote is None and not dry_run and not _has_default_remote(root):
        raise DvcError("no default DVC remote: `dvc remote add -d storage <folder or s3://...>` (commit "
                       ".dvc/config), or `pvdm publish --remote NAME URL --push`")
    if dry_run:
        for log_path, _, csv in plan.plots:
            print(f"convert {log_path} -> {csv}")
        if plan.add:
            print("dvc add " + shlex.join(plan.add))
        if plan.commit_stage:
            print(f"dvc commit --force {PAPER_STAGE}")
        return []
    for log_path, key, csv in plan.plots:
        n = write_loss_csv(root / log_path, key, root / csv)
        log.info("%s -> %s (%d points)", log_path, csv, n)
    times = snapshot_mtimes(root, plan.add + (list(TABLE_FILES) if plan.commit_stage else []))
    try:
        if plan.add:
            run_dvc(["add", "--quiet", *plan.add], root)
        if plan.commit_stage:
            run_dvc(["commit", "--quiet", "--force", PAPER_STAGE], root)
    finally:
        restore_mtimes(times)
    if remote is not None:
        run_dvc(["remote", "add", "--force", "--default", *remote], root)

    # The pointers, and the .gitignore files where DVC lists the data it tracks (when git would not
    # ignore them already).
    candidates = [f"{p}.dvc" for p in plan.add]
    candidates += sorted({str(Path(p).parent / ".gitignore") for p in plan.add
                          if (root / p).parent.joinpath(".gitignore").is_file()})
    if plan.commit_stage:
        candidates += ["dvc.yaml", "dvc.lock", TABLE_METRICS]
        if _git_ignored(root, TABLE_METRICS):
            log.warning("%s is git-ignored, so `dvc metrics diff` cannot compare commits: add "
                        "`!/%s` to .gitignore", TABLE_METRICS, TABLE_METRICS)
    if remote is not None:
        candidates.append(".dvc/config")
    to_commit = _git_changed(root, candidates)
    if git_add and to_commit:
        run_git(["add", "--", *to_commit], root)
        print(f"Staged {len(to_commit)} files in git; record them with: git commit -m 'Publish results'")
    elif to_commit:
        print(f"To record this in git, run:\n  git add {shlex.join(to_commit)}\n  git commit -m 'Publish results'")

    if push:
        run_dvc(["push", *[f"{p}.dvc" for p in plan.add], *([PAPER_STAGE] if plan.commit_stage else [])], root)
    return to_commit


def pull_metrics(root: Path, cfg: dict[str, Any], exps: Sequence[str], remote: str | None = None) -> list[str]:
    """`dvc pull` only the metric JSONs of the experiments: then `snakemake results/paper/table1.md`
    plans one job (paper_table) and trains nothing. Returns the pulled files."""
    root = Path(root)
    check_dvc_repo(root)
    evaluated = [exp for exp in exps if "eval" in cfg["experiments"][exp]]
    pointers = []
    for exp in evaluated:
        folder = root / Layout.metrics.format(exp=exp)
        pointers += sorted(str(p.relative_to(root)) for p in folder.glob("*.json.dvc"))
    if not pointers:
        raise FileNotFoundError(f"no metric pointers results/<exp>/metrics/*.json.dvc for {', '.join(exps)}: "
                                "publish them with `pvdm publish --metrics-only --push` and commit the .dvc files")
    run_dvc(["pull", *(["--remote", remote] if remote else []), *pointers], root)
    return [p.removesuffix(".dvc") for p in pointers]
