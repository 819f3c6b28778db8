"""Kill matrix: SIGKILL the running job of each stage at seeded random moments, rerun the documented
command, and compare every final artifact with an uninterrupted run of the same config.

    python tests/kill_matrix.py --kills 5 --out benchmarks/results/kill_matrix.json   # the full matrix
    pytest tests/test_kill_matrix.py                                                   # the CI subset

One campaign per call: an uninterrupted run of the DAG in one folder (the reference, and each stage's
duration), then in a second folder a sequence of trials, then the same folder with changed settings
(fewer training videos, another stage-1 learning rate): its rerun is killed in every stage too and
must end equal to an uninterrupted run of the changed settings in a third folder. A trial starts `snakemake` (the documented
command; the workflow profile sets rerun-incomplete), waits for the job of its stage, SIGKILLs that
job's process after a seeded fraction of the stage's reference duration, lets Snakemake fail, and checks
that every file under results/ loads. Snakemake itself is killed once, mid-job: the rerun must refuse
to start while the orphaned job still runs (Snakemake's lock, then the output folder's lock), and
complete after `snakemake --unlock` once the orphan is gone. Finally a plain rerun completes the DAG and
the artifacts are compared: tensors of every checkpoint, bytes of every clip store, metric values.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

# rule -> the pvdm subcommand its job runs
STAGES = {
    "prepare_data": "prepare",
    "train_autoencoder": "train-autoencoder",
    "finetune_gan": "finetune-gan",
    "train_diffusion": "train-diffusion",
    "sample": "sample",
    "eval_fvd": "fvd",
}


def changed_config(cfg_path: Path, path: Path) -> Path:
    """The matrix config with settings changed that every stage reads: fewer training videos (new
    clip stores) and another stage-1 learning rate. A rerun must recompute every stage from them."""
    cfg = yaml.safe_load(cfg_path.read_text())
    exp = cfg["experiments"]["tiny"]
    exp["data"]["moving_mnist"]["num_train"] -= 2
    exp["autoencoder"]["stage1"]["lr"] *= 0.5
    path.write_text(yaml.safe_dump(cfg))
    return path


def matrix_config(path: Path, stages: list[str]) -> Path:
    """tests/data/tiny.yaml with enough steps that a kill can land inside the training stages under
    test, without the long-video and untrained-baseline branches (test_pipeline covers those)."""
    cfg = yaml.safe_load((REPO / "tests" / "data" / "tiny.yaml").read_text())
    exp = cfg["experiments"]["tiny"]
    if "train_autoencoder" in stages:
        exp["autoencoder"]["stage1"].update(steps=24, save_every=3)
    if "finetune_gan" in stages:
        exp["autoencoder"]["gan"].update(steps=8, save_every=2, eval_every=4, patience=3)
    if "train_diffusion" in stages:
        exp["diffusion"]["train"].update(steps=24, save_every=3)
    exp["sampling"].update(long_videos=0, untrained_baseline=False, num_videos=8, batch_size=2)
    exp["sampling"]["sampler"]["steps"] = 25
    exp["eval"].update(fvd_videos=8)
    path.write_text(yaml.safe_dump(cfg))
    return path


def snakemake(workdir: Path, cfg: Path, *extra: str) -> list[str]:
    # targets and flags before --configfile, which takes every word after it
    return [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2", *extra,
            "--configfile", str(cfg)]


def job_pids(workdir: Path, command: str) -> list[int]:
    """Processes running ``pvdm <command>`` with ``workdir`` as their working directory."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in args[:8]]  # python, .../pvdm, [--threads N --nproc N], command
        if cwd == str(workdir) and command in words and any(w.endswith("/pvdm") or w == "pvdm" for w in words):
            pids.append(int(entry.name))
    return pids


def holds_lock(pid: int) -> bool:
    try:
        return any(os.readlink(fd).endswith("/.lock") for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def wait_until(predicate: Any, proc: subprocess.Popen, timeout: float = 600) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value or proc.poll() is not None:
            return value
        time.sleep(0.02)
    return None


def unloadable_files(results: Path) -> list[str]:
    """Every file under results/ that exists under its final name must load (temporaries aside)."""
    import av
    import torch
    from PIL import Image

    from pvdm.data.store import ClipStore
    from pvdm.utils.io import read_log_rows

    bad = []
    for path in sorted(results.rglob("*")):
        rel = path.relative_to(results)
        if any(part.startswith(".") for part in rel.parts) or "tensorboard" in rel.parts:
            continue  # temporaries (.name.XXXX.tmp, .store.partial, .store.old), locks, TensorBoard events
        try:
            if path.is_dir():
                if (path / "store.json").exists() or (path / "clips.u8").exists():
                    store = ClipStore(path)
                    _ = store[len(store) - 1] if len(store) else None
                continue
            suffix = path.suffix
            if suffix == ".json":
                json.loads(path.read_text())
            elif suffix == ".jsonl":
                read_log_rows(path)
            elif suffix == ".pt":
                torch.load(path, map_location="cpu", weights_only=True)
            elif suffix == ".npy":
                np.load(path, allow_pickle=False)
            elif suffix in (".png", ".gif"):
                with Image.open(path) as im:
                    im.load()
            elif suffix == ".mp4":
                with av.open(str(path)) as c:
                    next(c.decode(video=0))
        except Exception as e:  # noqa: BLE001 - any failure to load is the finding
            bad.append(f"{rel}: {type(e).__name__}: {str(e)[:200]}")
    return bad


def compare_runs(a: Path, b: Path) -> tuple[int, list[str]]:
    """Artifacts compared and mismatches: checkpoint tensors, clip store bytes, metric values."""
    import torch

    compared, mismatches = 0, []
    for pa in sorted(a.rglob("*")):
        rel = pa.relative_to(a)
        if any(part.startswith(".") for part in rel.parts) or not pa.is_file():
            continue
        pb = b / rel
        if pa.suffix == ".pt" or pa.name == "clips.u8" or (pa.suffix == ".json" and "metrics" in rel.parts):
            compared += 1
            if not pb.exists():
                mismatches.append(f"{rel}: missing after the kills")
                continue
        if pa.suffix == ".pt":
            sa = torch.load(pa, map_location="cpu", weights_only=True)
            sb = torch.load(pb, map_location="cpu", weights_only=True)
            if not _same(sa, sb):
                mismatches.append(f"{rel}: tensors differ")
        elif pa.name == "clips.u8":
            if pa.read_bytes() != pb.read_bytes():
                mismatches.append(f"{rel}: clip bytes differ")
        elif pa.suffix == ".json" and "metrics" in rel.parts and "feature_cache" not in rel.parts:
            va, vb = _values(json.loads(pa.read_text())), _values(json.loads(pb.read_text()))
            if va != vb:
                mismatches.append(f"{rel}: values differ: {va} vs {vb}")
    return compared, mismatches


def _same(x: Any, y: Any) -> bool:
    import torch

    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.shape == y.shape and torch.equal(x, y)
    if isinstance(x, dict):
        skip = {"time", "seconds", "created"}
        return isinstance(y, dict) and x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x if k not in skip)
    if isinstance(x, (list, tuple)):
        return isinstance(y, (list, tuple)) and len(x) == len(y) and all(_same(i, j) for i, j in zip(x, y, strict=True))
    return x == y


def _values(d: Any) -> Any:
    """The numbers of a metric file (timings aside)."""
    if isinstance(d, dict):
        return {k: _values(v) for k, v in d.items() if k not in ("seconds", "time", "protocol", "created")}
    if isinstance(d, list):
        return [_values(v) for v in d]
    return d


def run_campaign(root: Path, kills: int, stages: list[str], seed: int, target: str | None = None,
                 kill_snakemake: bool = True, say: Any = print, changed_kills: int = 1) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    cfg = matrix_config(root / "matrix.yaml", stages)
    extra = [target] if target else []
    ref, work = root / "reference", root / "killed"
    ref.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    t0 = time.monotonic()
    straight = subprocess.run(snakemake(ref, cfg, *extra), capture_output=True, text=True, env=ENV)
    if straight.returncode != 0:
        raise RuntimeError(f"the uninterrupted run failed:\n{straight.stderr[-3000:]}")
    reference_s = time.monotonic() - t0
    durations = {}
    for rule in stages:
        rows = [
            float(line.split("\t")[0])
            for tsv in (ref / "results" / "tiny" / "benchmarks").glob(f"{rule}*.tsv")
            for line in tsv.read_text().splitlines()[1:]
        ]
        durations[rule] = max(rows) if rows else 5.0
    say(f"reference run {reference_s:.0f} s; stage durations {durations}")

    rng = random.Random(seed)
    trials: list[dict[str, Any]] = []
    plan = [(rule, rng.uniform(0.05, 0.6)) for rule in stages for _ in range(kills)]
    # Snakemake itself is killed once, while the earliest training stage of the plan runs: just
    # before that stage's own trials (earlier stages keep theirs)
    sm_rule = next((r for r in stages if r.startswith(("train", "finetune"))), stages[0]) if kill_snakemake else None
    for i, (rule, fraction) in enumerate(plan):
        if rule == sm_rule:
            trials.append(kill_snakemake_trial(work, cfg, extra, rule, say))
            sm_rule = None
        trials.append(kill_trial(work, cfg, extra, rule, fraction * durations[rule], say,
                                 f"trial {i + 1}/{len(plan)}"))
    t1 = time.monotonic()
    final = subprocess.run(snakemake(work, cfg, *extra), capture_output=True, text=True, env=ENV)
    final_s = time.monotonic() - t1
    if final.returncode != 0:
        raise RuntimeError(f"the final rerun failed:\n{final.stdout[-3000:]}\n{final.stderr[-3000:]}")
    compared, mismatches = compare_runs(ref / "results", work / "results")
    changed = changed_setting_trials(root, work, cfg, extra, stages, changed_kills, rng, durations, say)
    trials += changed.pop("trials")
    result = {
        "seed": seed, "kills_per_stage": kills, "stages": stages, "target": target or "all",
        "reference_run_s": round(reference_s, 1), "campaign_s": round(time.monotonic() - t0, 1),
        "kills_tried": len(plan),
        "kills_landed": sum(t.get("killed", False) for t in trials if "stage" in t and "after_changed_setting" not in t),
        "snakemake_kill": next((t for t in trials if "snakemake_killed_during" in t), None),
        "kills_landed_per_stage": {r: sum(t.get("killed", False) for t in trials
                                          if t.get("stage") == r and "after_changed_setting" not in t)
                                   for r in stages},
        "unloadable_after_any_kill": sum(len(t.get("unloadable", [])) for t in trials),
        "final_rerun_s": round(final_s, 1),
        "artifacts_compared": compared, "mismatches": mismatches, "changed_setting": changed, "trials": trials,
    }
    return result


def kill_trial(work: Path, cfg: Path, extra: list[str], rule: str, delay: float, say: Any, label: str
               ) -> dict[str, Any]:
    """Start Snakemake up to ``rule``, SIGKILL that rule's job ``delay`` seconds after it appears, let
    Snakemake fail, and list the files under results/ that no longer load."""
    # --until: a kill that comes too late finishes this stage only, not the rest of the DAG
    proc = subprocess.Popen(snakemake(work, cfg, *extra, "--until", rule), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=ENV)
    pids = wait_until(lambda: job_pids(work, STAGES[rule]), proc)
    killed = False
    if pids:
        time.sleep(delay)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed = True
            except ProcessLookupError:
                pass
    proc.communicate(timeout=1200)
    bad = unloadable_files(work / "results")
    trial = {"stage": rule, "delay_s": round(delay, 2), "killed": killed, "snakemake_rc": proc.returncode,
             "unloadable": bad}
    if not killed:
        trial["note"] = "the job had finished before the kill" if pids else "the stage was already done"
    say(f"{label}: {rule} after {delay:.2f} s: {'killed' if killed else trial['note']}; "
        f"unloadable files: {len(bad)}")
    return trial


def changed_setting_trials(root: Path, work: Path, cfg: Path, extra: list[str], stages: list[str], kills: int,
                           rng: random.Random, durations: dict[str, float], say: Any) -> dict[str, Any]:
    """A finished run whose settings then change (``changed_config``): the rerun is killed in each
    stage ``kills`` times, then run to the end. Every artifact must equal an uninterrupted run of the
    changed config: nothing of the old run may be resumed or kept."""
    new_cfg = changed_config(cfg, root / "matrix_changed.yaml")
    ref = root / "reference_changed"
    ref.mkdir(exist_ok=True)
    straight = subprocess.run(snakemake(ref, new_cfg, *extra), capture_output=True, text=True, env=ENV)
    if straight.returncode != 0:
        raise RuntimeError(f"the uninterrupted run of the changed config failed:\n{straight.stderr[-3000:]}")
    trials = [kill_trial(work, new_cfg, extra, rule, rng.uniform(0.05, 0.6) * durations[rule], say,
                         f"changed setting, kill {k + 1}/{kills}")
              for rule in stages for k in range(kills)]
    final = subprocess.run(snakemake(work, new_cfg, *extra), capture_output=True, text=True, env=ENV)
    if final.returncode != 0:
        raise RuntimeError(f"the final rerun of the changed config failed:\n{final.stdout[-3000:]}")
    compared, mismatches = compare_runs(ref / "results", work / "results")
    for t in trials:
        t["after_changed_setting"] = True
    return {"changed": "data.moving_mnist.num_train - 2, autoencoder.stage1.lr x 0.5",
            "kills_landed": sum(t["killed"] for t in trials), "artifacts_compared": compared,
            "mismatches": mismatches, "trials": trials}


def kill_snakemake_trial(work: Path, cfg: Path, extra: list[str], rule: str, say: Any) -> dict[str, Any]:
    """SIGKILL Snakemake while the job of ``rule`` runs. The orphaned job is frozen (SIGSTOP) so that
    it certainly still holds its folder while the reruns are tried: the first rerun must stop at
    Snakemake's lock, the one after `snakemake --unlock` at the output folder's lock (never a second
    writer beside the orphan). Then the orphan is killed and the campaign goes on."""
    proc = subprocess.Popen(snakemake(work, cfg, *extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=ENV, start_new_session=True)
    # once the job holds its output folder (an open .lock file): killed earlier, while Python still
    # imports, the job would never write anything and there would be nothing to protect
    orphans = wait_until(lambda: [p for p in job_pids(work, STAGES[rule]) if holds_lock(p)], proc) or []
    proc.kill()
    proc.wait()
    for pid in orphans:
        os.kill(pid, signal.SIGSTOP)
    trial: dict[str, Any] = {"snakemake_killed_during": rule, "orphans": len(orphans)}
    if orphans:
        locked = subprocess.run(snakemake(work, cfg, *extra), capture_output=True, text=True, env=ENV)
        trial["rerun_rc"] = locked.returncode
        trial["rerun_stopped_by_snakemake_lock"] = "cannot be locked" in locked.stdout + locked.stderr
        subprocess.run(snakemake(work, cfg, "--unlock"), capture_output=True, env=ENV)
        second = subprocess.run(snakemake(work, cfg, *extra), capture_output=True, text=True, env=ENV)
        trial["after_unlock_rc"] = second.returncode
        trial["after_unlock_stopped_by_folder_lock"] = "is in use by" in second.stdout + second.stderr
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    subprocess.run(snakemake(work, cfg, "--unlock"), capture_output=True, env=ENV)
    trial["unloadable"] = unloadable_files(work / "results")
    say(f"snakemake killed during {rule} ({len(orphans)} job(s) orphaned): {trial}")
    return trial


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=5, help="kills per stage")
    p.add_argument("--changed-kills", type=int, default=2, help="kills per stage after the settings change")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/pvdm_kill_matrix"))
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "kill_matrix.json")
    args = p.parse_args()
    import platform

    result = run_campaign(args.workdir, args.kills, args.stages, args.seed, changed_kills=args.changed_kills)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    result["machine"] = f"{cpu}, {os.cpu_count()} cores"
    result["date"] = time.strftime("%Y-%m-%d")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"kills tried {result['kills_tried']}, landed {result['kills_landed']} "
          f"({result['kills_landed_per_stage']}); unloadable files after any kill: "
          f"{result['unloadable_after_any_kill']}; artifacts compared {result['artifacts_compared']}, "
          f"mismatches: {len(result['mismatches'])}; after the settings changed: "
          f"{result['changed_setting']['kills_landed']} kills landed, {result['changed_setting']['artifacts_compared']} "
          f"artifacts compared with a straight run of the new settings, "
          f"{len(result['changed_setting']['mismatches'])} mismatches; wrote {args.out}")
    failed = result["mismatches"] or result["changed_setting"]["mismatches"] or result["unloadable_after_any_kill"]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
