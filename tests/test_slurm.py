"""The tiny DAG through a real Slurm cluster: two nodes on this machine (munged, slurmctld, one
slurmd per node; fake GPUs through GRES) started by tests/cluster/slurm-up.sh (NODES=2),
Snakemake's Slurm executor with profiles/ci-slurm, the paper table at the end. The autoencoder's
stage 1 runs on both nodes (one launcher per node under srun); the diffusion job is requeued
(`scontrol requeue`, a preemption) while it trains and later driven into its time limit, and must
resume to the weights of an uninterrupted run. Timing: bring-up 2-4 s (24 s on a fresh machine,
apt-get included); each job adds a Snakemake start inside the job and the plugin's status polling,
whose interval grows by 10 s per check (2, 12, 22, ... s), so a job is seen finished 14, 36, 68 or
110 s after the previous one. Measured on a shared 2-core box: 11-16 min for the DAG at load
10-14, about 5 min at lower load.

Runs only as root with apt-get or sbatch available (it installs and starts daemons), or with
PVDM_TEST_SLURM=1; PVDM_TEST_SLURM=0 skips it. PVDM_SLURM_TIMEOUT bounds the Snakemake run
(seconds, default 1200); PVDM_SLURM_KEEP=1 leaves the cluster running afterwards for debugging.
The sbatch flags of every GPU request form are checked without a cluster (test_gpu_request_flags).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import DATA, REPO

TIMEOUT = int(os.environ.get("PVDM_SLURM_TIMEOUT", "1200"))
STALL_S = 120
FROZEN_S = 90  # slurmctld checks time limits every 30 s: a job frozen this long was not going to time out

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
CLUSTER = REPO / "tests" / "cluster"
PROFILE = REPO / "profiles" / "ci-slurm"
# The GPU request of the diffusion training comes from the experiment config (resources:), as on
# a real cluster: 2 of the fake cluster's GPUs, so the job runs torchrun with 2 processes (gloo:
# no CUDA on this machine).
GPU_RULE, GPUS = "train_diffusion", 2
# The autoencoder's stage 1 runs on both nodes of the test cluster (one launcher each, c10d over
# localhost, one fake GPU each); the diffusion training is requeued (`scontrol requeue`) while it trains.
# slurmctld enforces time limits every 30 s, and 80 tiny steps can take less than that on a quiet
# machine, so the test freezes the job (SIGSTOP) once its limit is set; Slurm sends SIGCONT before SIGTERM.
MULTINODE_RULE, REQUEUE_STEPS = "train_autoencoder", 80  # requeued at step 3+, time limit at step 10+
# Rules that must run as Slurm jobs (light rules such as paper_table may be localrules).
SLURM_RULES = {"prepare_data", "train_autoencoder", "finetune_gan", "train_diffusion", "sample", "eval_fvd"}

SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.$", re.M)
SBATCH = re.compile(r"^sbatch call: (.*)$", re.M)


def skip_reason() -> str | None:
    flag = os.environ.get("PVDM_TEST_SLURM")
    if flag == "1":
        return None
    if flag == "0":
        return "PVDM_TEST_SLURM=0"
    if os.geteuid() != 0:
        return "needs root to install and start a local Slurm cluster (or PVDM_TEST_SLURM=1)"
    if not (shutil.which("sbatch") or shutil.which("apt-get")):
        return "neither sbatch nor apt-get available (or PVDM_TEST_SLURM=1)"
    return None


def say(config: pytest.Config, line: str) -> None:
    """Print past pytest's output capture: job ids, sbatch lines and timings belong in CI logs."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(f"[slurm] {line}")
        return
    with capture.global_and_fixture_disabled():
        reporter.ensure_newline()
        reporter.write_line(f"[slurm] {line}")


POLLING = re.compile(r"active_jobs|Status query|Checking (the status|\d+ active)|missing_sacct_status")


def tail(out: str, lines: int = 80) -> str:
    """The end of Snakemake's verbose output without the status-polling chatter."""
    return "\n".join([line for line in out.splitlines() if not POLLING.search(line)][-lines:])


def script(name: str, timeout: int) -> subprocess.CompletedProcess:
    # two nodes on this machine (one slurmd each), each with all CPUs and 2 fake GPUs
    return subprocess.run(
        ["bash", str(CLUSTER / name)], capture_output=True, text=True, timeout=timeout, env=ENV | {"NODES": "2"}
    )


@pytest.fixture(scope="module")
def slurm_cluster(pytestconfig):
    reason = skip_reason()
    if reason:
        say(pytestconfig, f"skipped: {reason}")
        pytest.skip(reason)
    try:
        up = script("slurm-up.sh", timeout=900)  # includes apt-get on a fresh machine
        for line in (up.stdout + up.stderr).splitlines():
            if line.startswith("slurm-up:"):
                say(pytestconfig, line)
        if up.returncode != 0:
            pytest.fail(f"slurm-up.sh failed (rc {up.returncode}):\n{up.stdout}\n{up.stderr}")
        yield
    finally:
        if os.environ.get("PVDM_SLURM_KEEP") == "1":
            say(
                pytestconfig, "PVDM_SLURM_KEEP=1: cluster left running (tests/cluster/slurm-down.sh stops it)"
            )
        else:
            down = script("slurm-down.sh", timeout=120)
            for line in (down.stdout + down.stderr).splitlines():
                say(pytestconfig, line)


def cluster_queue() -> list[tuple[str, str, str]]:
    """(job id, state, reason) of every unfinished job of the (private) test cluster."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-t", "PD,R,CG,CF", "-o", "%i|%T|%r"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [tuple(line.split("|", 2)) for line in out.splitlines() if line.count("|") == 2]


def run_snakemake(workdir: Path, log: Path, *args: str, during=None) -> tuple[int, float, str]:  # noqa: ANN001
    """Run Snakemake in its own process group and SIGKILL the whole group (Snakemake ignores
    SIGTERM while it waits on job status) on timeout, or when the cluster is stuck: a job pending
    while nothing runs for STALL_S seconds (e.g. a request the node can never satisfy), which
    Snakemake would wait on forever. ``during()`` is called every second while it runs. Returns
    (rc, wall seconds, why it was killed or "")."""
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args]
    t0 = time.monotonic()
    stalled_since, killed = None, ""
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=ENV, start_new_session=True
        )
        try:
            while proc.poll() is None:
                now = time.monotonic()
                queue = cluster_queue()
                if queue and not any(
                    state in ("RUNNING", "COMPLETING", "CONFIGURING") for _, state, _ in queue
                ):
                    stalled_since = stalled_since or now
                else:
                    stalled_since = None
                if now - t0 > TIMEOUT:
                    killed = f"timeout after {TIMEOUT}s"
                elif stalled_since and now - stalled_since > STALL_S:
                    killed = f"jobs pending with nothing running for {STALL_S}s: {queue}"
                if killed:
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                for _ in range(5):
                    if during is not None:
                        during()
                    time.sleep(1)
        finally:  # also on pytest-timeout or Ctrl-C: never leave Snakemake behind
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait(timeout=30)
    return rc, time.monotonic() - t0, killed


def test_slurm_profile_dry_run(tmp_path):
    """profiles/slurm plans the paper DAG without a cluster; its site placeholders come from the
    environment when set and are left out when not."""
    env = {k: v for k, v in ENV.items() if not k.startswith("PVDM_SLURM_")}
    cmd = [str(BIN / "snakemake"), "-n", "--workflow-profile", "profiles/slurm"]
    cmd += ["--configfile", str(REPO / "config" / "ucf101.yaml"), "-d", str(tmp_path)]
    resources = re.compile(r"^rule (\w+):.*?^\s+resources: (.*?)$", re.M | re.S)

    bare = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert bare.returncode == 0, bare.stdout[-3000:] + bare.stderr[-3000:]
    planned = dict(resources.findall(bare.stdout))
    assert {"train_diffusion", "prepare_data", "paper_table"} <= set(planned), planned
    assert not any("$" in r for r in planned.values()), planned  # no unexpanded placeholder
    assert "constraint" not in planned["train_diffusion"] and "qos" not in planned["prepare_data"]

    site = {"PVDM_SLURM_PARTITION": "cpu", "PVDM_SLURM_GPU_PARTITION": "gpu", "PVDM_SLURM_ACCOUNT": "proj"}
    site |= {"PVDM_SLURM_GPU_CONSTRAINT": "a100", "PVDM_SLURM_QOS": "normal"}
    set_ = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env | site, timeout=300)
    assert set_.returncode == 0, set_.stdout[-3000:] + set_.stderr[-3000:]
    planned = dict(resources.findall(set_.stdout))
    gpu, cpu = planned["train_diffusion"], planned["prepare_data"]
    assert "slurm_partition=gpu" in gpu and "constraint=a100" in gpu and "slurm_account=proj" in gpu, gpu
    assert "slurm_partition=cpu" in cpu and "qos=normal" in cpu and "constraint" not in cpu, cpu


class Resources(dict):
    """A job's resources as the Slurm plugin reads them (``job.resources.get(k)``, ``job.resources.k``)."""

    def __getattr__(self, key: str):  # noqa: ANN204
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def sbatch_flags(stage: str, resources: dict, env: dict[str, str]) -> str:
    """The sbatch options that snakemake-executor-plugin-slurm (the pinned version) makes of a job of
    ``stage`` with ``resources.<stage>`` of the tiny experiment, under the GPU request ``env``."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    from pvdm.config import validate
    from pvdm.dag import Dag

    tiny = yaml.safe_load((DATA / "tiny.yaml").read_text())
    tiny["experiments"]["tiny"]["resources"] = {stage: resources}
    tiny["experiments"]["tiny"]["diffusion"]["train"]["batch_size"] = 16  # splits over 1, 2, 4, 8 processes
    exp = Dag(validate(tiny))["tiny"]
    j = exp.job(stage)
    res = Resources(mem_mb=j["mem_mb"], runtime=j["runtime"], **exp.slurm_resources(stage, env))
    job = SimpleNamespace(resources=res, threads=j["threads"])
    validate_slurm_extra(job)  # the plugin refuses flags it manages in slurm_extra
    params = {"run_uuid": "u", "slurm_logfile": "l", "comment_str": "c", "account": "", "partition": "-p gpu",
              "workdir": ""}
    call = get_submit_command(job, params) + set_gres_string(job)
    return " ".join(call.split()[11:])  # after sbatch --parsable --job-name u --output l --export --comment c -p gpu


@pytest.mark.parametrize(
    ("env", "resources", "want"),
    [
        ({}, {"gpus": 2, "cpus_per_gpu": 4}, "-t 120 --mem 8000 --cpus-per-gpu=4 --gpus=2"),
        ({"PVDM_SLURM_GPU_MODEL": "a100"}, {"gpus": 2, "cpus_per_gpu": 4},
         "-t 120 --mem 8000 --cpus-per-gpu=4 --gpus=a100:2"),
        ({"PVDM_SLURM_GPU_REQUEST": "gres"}, {"gpus": 2, "cpus_per_gpu": 4},
         "-t 120 --mem 8000 --cpus-per-task=8 --gres=gpu:2"),
        ({"PVDM_SLURM_GPU_REQUEST": "gres", "PVDM_SLURM_GPU_MODEL": "a100"}, {"gpus": 2, "cpus_per_gpu": 4},
         "-t 120 --mem 8000 --cpus-per-task=8 --gres=gpu:a100:2"),
        # 2 nodes x 4 GPUs: one task per node (the launcher), GPUs counted per node in both forms
        ({}, {"gpus": 4, "cpus_per_gpu": 8, "nodes": 2},
         "-t 120 --mem 8000 --nodes=2 --ntasks=2 --cpus-per-task=32 --ntasks-per-node=1 --gpus-per-node=4"),
        ({"PVDM_SLURM_GPU_MODEL": "h100"}, {"gpus": 4, "cpus_per_gpu": 8, "nodes": 2},
         "-t 120 --mem 8000 --nodes=2 --ntasks=2 --cpus-per-task=32 --ntasks-per-node=1 --gpus-per-node=h100:4"),
        ({"PVDM_SLURM_GPU_REQUEST": "gres"}, {"gpus": 4, "cpus_per_gpu": 8, "nodes": 2},
         "-t 120 --mem 8000 --nodes=2 --ntasks=2 --cpus-per-task=32 --ntasks-per-node=1 --gres=gpu:4"),
        # CPU jobs ask for no GPU whatever the form (a GPU model alone must not request one)
        ({"PVDM_SLURM_GPU_REQUEST": "gres", "PVDM_SLURM_GPU_MODEL": "a100"}, {"cpus": 3},
         "-t 120 --mem 8000 --ntasks=1 --cpus-per-task=3"),
        ({"PVDM_SLURM_GPU_MODEL": "a100"}, {"processes": 2, "cpus": 4, "nodes": 2},
         "-t 120 --mem 8000 --nodes=2 --ntasks=2 --cpus-per-task=4 --ntasks-per-node=1"),
    ],
)
def test_gpu_request_flags(env, resources, want):
    flags = sbatch_flags("train_diffusion", resources, env)
    assert flags == want
    assert not ("--gpus" in flags and "--gres" in flags)  # one form, never both


def test_gpu_request_bad_settings():
    with pytest.raises(ValueError, match=r"PVDM_SLURM_GPU_REQUEST='gpu': expected gpus .* or gres"):
        sbatch_flags("train_diffusion", {"gpus": 1}, {"PVDM_SLURM_GPU_REQUEST": "gpu"})
    with pytest.raises(ValueError, match=r"PVDM_SLURM_GPU_MODEL='a100 x2': expected a GPU type"):
        sbatch_flags("train_diffusion", {"gpus": 1}, {"PVDM_SLURM_GPU_MODEL": "a100 x2"})
    # the global batch must split over nodes x GPUs: known when the DAG is built
    with pytest.raises(ValueError, match=r"experiments.tiny.diffusion.train.batch_size = 16 does not split over 6 "
                       r"processes \(resources.train_diffusion: nodes 2 x gpus 3\); choose a multiple of 6"):
        sbatch_flags("train_diffusion", {"gpus": 3, "nodes": 2}, {})
    with pytest.raises(ValueError, match=r"resources.sample: gpus 1, processes 1, nodes 2: sample jobs run one"):
        sbatch_flags("sample", {"gpus": 1, "nodes": 2}, {})


class Interruptions:
    """Interrupt the Slurm job of ``rule`` while it trains, once per entry of ``plan`` (what, after
    how many logged steps), each after the previous one has resumed:

    * ``requeue``: ``scontrol requeue``, as a preemption does: Slurm SIGTERMs the job, puts it back
      in the queue and starts it again under the same job id (Slurm holds a requeued job back for
      2 minutes, its BeginTime; this starts it at once).
    * ``time limit``: ``scontrol update EndTime=now``: the job's time limit is reached at
      slurmctld's next time-limit check (at most 30 s), Slurm SIGTERMs it ("CANCELLED ... DUE TO TIME
      LIMIT", state TIMEOUT) and Snakemake submits it again (``--retries 1``). Until then the job's
      processes are stopped (SIGSTOP), so that it is still training whatever the machine's speed: Slurm
      sends SIGCONT before SIGTERM (as to a job stopped in a debugger); the test sends SIGCONT itself
      once the job is no longer running or after FROZEN_S.

    Called every second while Snakemake runs; records the jobs, the steps each run stopped at and
    resumed from (from the rule's log, which each run overwrites), and Slurm's restart count."""

    def __init__(self, rule: str, steps_log: Path, rule_log: Path, plan: list[tuple[str, int]]):
        self.rule, self.steps_log, self.rule_log, self.plan = rule, steps_log, rule_log, list(plan)
        self.done: list[tuple[str, str]] = []  # (what, Slurm job id)
        self.stopped: set[int] = set()  # "stopped by SIGTERM at step N" seen in the rule's log
        self.resumed: set[int] = set()  # "resuming from ... at step N"
        self.restarts: int | None = None
        self.frozen: tuple[float, list[int], str] | None = None  # (since, pids, job) stopped by SIGSTOP

    def running_job(self) -> str | None:
        queue = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i|%k"], capture_output=True, text=True,
                               timeout=30).stdout
        jobs = [i for i, _, c in (line.partition("|") for line in queue.splitlines()) if c.startswith(f"rule_{self.rule}")]
        return jobs[0] if jobs else None

    @staticmethod
    def job_processes(job: str) -> list[int]:
        """The processes of Slurm job ``job`` on this machine (SLURM_JOB_ID in their environment)."""
        pids = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and f"SLURM_JOB_ID={job}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
            except OSError:  # gone, or not ours to read
                pass
        return pids

    def thaw(self, force: bool = False) -> None:
        """SIGCONT the frozen job once Slurm has ended it (or FROZEN_S passed, or ``force``)."""
        if self.frozen is None:
            return
        since, pids, job = self.frozen
        shown = "" if force else subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True,
                                                timeout=30).stdout
        if force or "JobState=RUNNING" not in shown or time.monotonic() - since > FROZEN_S:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            self.frozen = None

    def __call__(self) -> None:
        self.thaw()
        text = self.rule_log.read_text() if self.rule_log.is_file() else ""
        self.stopped |= {int(n) for n in re.findall(r"stopped by SIGTERM at step (\d+)", text)}
        self.resumed |= {int(n) for n in re.findall(r"resuming from \S+ at step (\d+)", text)}
        if self.done and self.done[-1][0] == "requeue":
            shown = subprocess.run(["scontrol", "show", "job", "-o", self.done[-1][1]], capture_output=True,
                                   text=True, timeout=30).stdout
            if "JobState=PENDING" in shown and "Reason=BeginTime" in shown:
                subprocess.run(["scontrol", "update", f"JobId={self.done[-1][1]}", "StartTime=now"], timeout=30)
            restarts = re.search(r"\bRestarts=(\d+)", shown)
            if restarts and "JobState=RUNNING" in shown:
                self.restarts = int(restarts.group(1))
        if not self.plan or len(self.resumed) < len(self.done):  # the last interruption has not resumed yet
            return
        what, after = self.plan[0]
        if not self.steps_log.is_file() or self.steps_log.read_text().count("\n") < after:
            return
        job = self.running_job()
        if job is None:
            return
        cmd = ["requeue", job] if what == "requeue" else ["update", f"JobId={job}", "EndTime=now"]
        done = subprocess.run(["scontrol", *cmd], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        if what == "time limit":
            pids = self.job_processes(job)
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            self.frozen = (time.monotonic(), pids, job)
        self.done.append((what, job))
        self.plan.pop(0)


def test_plan_counts_the_gpus_of_every_node():
    from pvdm.config import load_config
    from pvdm.report.cost import plan_costs, to_markdown

    cfg = load_config(REPO / "config" / "ucf101.yaml")
    cfg["experiments"]["ucf101"]["resources"]["train_diffusion"].update(nodes=2, gpus=4)
    costs, on = plan_costs(cfg, Path("absent.json"))
    (train,) = [c for c in costs if c.rule == "train_diffusion"]
    assert (train.gpus_per_job, train.nodes) == (8, 2)
    assert "| train_diffusion | 1 | 8 (2 nodes x 4) |" in to_markdown(costs, on)


# pytest-timeout (600 s in pyproject) must not fire before our own, cleaner timeout: bring-up
# (apt-get on a fresh machine) + the Snakemake run + teardown.
@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT + 1200)
def test_tiny_dag_through_slurm(slurm_cluster, tmp_path, pytestconfig, request):
    # The tiny experiment without the long-video and untrained-U-Net branches: 9 Slurm jobs
    # instead of 13 (test_pipeline covers those branches locally); the cluster path is the same.
    tiny = yaml.safe_load((DATA / "tiny.yaml").read_text())
    tiny["experiments"]["tiny"]["sampling"].update(long_videos=0, untrained_baseline=False)
    tiny["experiments"]["tiny"]["resources"] = {
        GPU_RULE: {"gpus": GPUS, "cpus_per_gpu": 1},
        MULTINODE_RULE: {"gpus": 1, "cpus_per_gpu": 1, "nodes": 2},  # one fake GPU on each of the two nodes
        "sample": {"gpus": 1, "cpus_per_gpu": 1, "shards": 2},  # two sampling jobs, gathered
    }
    # the diffusion training runs long enough (a few seconds) to be requeued while it trains
    tiny["experiments"]["tiny"]["diffusion"]["train"].update(steps=REQUEUE_STEPS, save_every=1)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny))
    log = tmp_path / "snakemake.log"
    rule_log = tmp_path / "results" / "tiny" / "logs" / f"{GPU_RULE}.log"
    steps_log = tmp_path / "results" / "tiny" / "diffusion" / "log.jsonl"
    interrupt = Interruptions(GPU_RULE, steps_log, rule_log, [("requeue", 3), ("time limit", 10)])
    # the uninterrupted run of the same command, started once its input exists: it runs while
    # Snakemake waits on the cluster (the CPUs idle between status polls), not after the DAG
    from pvdm.config import validate
    from pvdm.dag import Dag

    exp = Dag(validate(yaml.safe_load(cfg.read_text())))["tiny"]
    straight, gan = tmp_path / "straight", tmp_path / "results" / "tiny" / "autoencoder" / "gan" / "model.pt"
    reference_cmd = [*exp.launcher(GPU_RULE).split(), "train-diffusion", "--settings", exp.settings("diffusion"),
                     "--data", "results/tiny/data", "--autoencoder", str(gan.relative_to(tmp_path)),
                     "--out", str(straight)]
    reference: list[subprocess.Popen] = []
    request.addfinalizer(lambda: [p.kill() for p in reference if p.poll() is None])  # never left running
    request.addfinalizer(lambda: interrupt.thaw(force=True))  # never left stopped

    def during() -> None:
        interrupt()
        if not reference and gan.is_file():
            reference.append(subprocess.Popen(reference_cmd, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                              stderr=(tmp_path / "straight.log").open("w"), env=ENV))

    rc, wall, killed = run_snakemake(
        tmp_path,
        log,
        "--workflow-profile",
        str(PROFILE),
        "--configfile",
        str(cfg),
        "--verbose",  # the plugin logs its sbatch command lines at debug level
        "--retries",
        "1",  # a job that hit its time limit is submitted again (as profiles/slurm does)
        during=during,
    )
    out = log.read_text()
    say(
        pytestconfig,
        f"snakemake rc={rc} DAG wall time {wall:.1f}s" + (f" (killed: {killed})" if killed else ""),
    )

    submitted = [(int(j), int(s), Path(p)) for j, s, p in SUBMITTED.findall(out)]
    sbatch = SBATCH.findall(out)
    for _, slurm_id, path in submitted:
        say(
            pytestconfig,
            f"job {slurm_id}: {path.relative_to(tmp_path) if path.is_relative_to(tmp_path) else path}",
        )
    for call in sbatch:
        say(pytestconfig, "sbatch " + re.sub(r' --wrap=".*', " --wrap=...", call.removeprefix("sbatch ")))
    assert rc == 0, f"snakemake rc={rc} after {wall:.0f}s {killed}; output:\n{tail(out)}"
    assert (tmp_path / "results" / "paper" / "table1.md").is_file()

    # every heavy rule became a Slurm job, with its Slurm log kept under the profile's logdir
    logdir = tmp_path / "results" / "logs" / "slurm"
    rules = {}
    for _, slurm_id, path in submitted:
        assert path.is_file(), f"no Slurm log {path}"
        assert path.is_relative_to(logdir), path
        rules.setdefault(path.relative_to(logdir).parts[0].removeprefix("rule_"), []).append((slurm_id, path))
    assert SLURM_RULES <= set(rules), f"not submitted to Slurm: {SLURM_RULES - set(rules)}"
    assert len(sbatch) == len(submitted)

    # the GPU rule asked Slurm for GPUs, and Slurm bound them to the step the rule ran in
    # (the GPU rule was submitted twice: again after its time limit, below; every other job once)
    assert {r: len(j) for r, j in rules.items() if len(j) > 1 and r != "sample"} == {GPU_RULE: 2}, rules
    gpu_call = [c for c in sbatch if f"/rule_{GPU_RULE}/" in c.split(" --wrap=")[0]][0]
    assert f"--gpus={GPUS}" in gpu_call and "--cpus-per-gpu=1" in gpu_call, gpu_call
    (gpu_job, gpu_log), (retry_job, _) = rules[GPU_RULE]
    want = ",".join(map(str, range(GPUS)))
    prolog = re.findall(
        r"^slurm-task: job=(\d+) step=(\S+) .*CUDA_VISIBLE_DEVICES=(\S+)", gpu_log.read_text(), re.M
    )
    say(pytestconfig, f"{GPU_RULE} job {gpu_job} task lines (TaskProlog): {prolog}")
    assert (str(gpu_job), "0", want) in prolog, (
        f"step 0 of job {gpu_job} did not see CUDA_VISIBLE_DEVICES={want}"
    )
    # the training command itself reports what it saw (once pvdm logs its device setup)
    gpu_rule_log = rule_log.read_text()
    seen = re.findall(r"CUDA_VISIBLE_DEVICES=([^\s;,]+(?:,[^\s;,]+)*)", gpu_rule_log)
    say(pytestconfig, f"{GPU_RULE} log: CUDA_VISIBLE_DEVICES={seen or 'not logged'}")
    assert seen and all(v == want for v in seen), seen
    assert "launching 2 processes" in gpu_rule_log and "processes: 2 (gloo)" in gpu_rule_log  # DDP processes in the job
    assert len(rules["sample"]) == 2  # the sample set was drawn by two jobs
    # jobs without a GPU request see no GPU
    _, cpu_log = rules["prepare_data"][0]
    assert "CUDA_VISIBLE_DEVICES=unset" in cpu_log.read_text(), cpu_log
    shown = subprocess.run(
        ["scontrol", "show", "job", "-o", str(gpu_job)], capture_output=True, text=True, timeout=30
    ).stdout
    tres = " ".join(
        f for f in shown.split() if f.split("=")[0] in ("JobState", "NumCPUs", "TresPerJob", "TRES")
    )
    say(pytestconfig, f"scontrol show job {gpu_job}: {tres or '(job record gone: MinJobAge passed)'}")

    # one job on two nodes: one launcher per node under srun, one world of 2 processes
    (mn_call,) = [c for c in sbatch if f"/rule_{MULTINODE_RULE}/" in c.split(" --wrap=")[0]]
    for flag in ("--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--gpus-per-node=1"):
        assert flag in mn_call.split(" --wrap=")[0], (flag, mn_call)
    ((mn_job, _),) = rules[MULTINODE_RULE]
    # the srun tasks' output (TaskProlog lines included) goes to the rule's log, where srun's goes
    mn_rule_log = (tmp_path / "results" / "tiny" / "logs" / f"{MULTINODE_RULE}.log").read_text()
    steps = re.findall(rf"^slurm-task: job={mn_job} step=0 node=(\S+) CUDA_VISIBLE_DEVICES=(\S+)", mn_rule_log, re.M)
    say(pytestconfig, f"{MULTINODE_RULE} job {mn_job}: srun step 0 tasks (node, CUDA_VISIBLE_DEVICES): {steps}")
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True, timeout=30).stdout.strip()
    assert sorted(steps) == [(f"{host}-0", "0"), (f"{host}-1", "0")]  # slurm-up.sh's node names
    assert "on node 0 of 2" in mn_rule_log and "on node 1 of 2" in mn_rule_log, mn_rule_log[-3000:]
    assert "processes: 2 (gloo)" in mn_rule_log

    # preemption, then a time limit: Slurm requeued the diffusion job while it trained; it saved and
    # exited resumable, ran again under the same job id and resumed from its state.pt; then the job
    # hit its time limit, saved, ended TIMEOUT, Snakemake submitted it again, it resumed and finished
    say(pytestconfig, f"interruptions: {interrupt.done}; Slurm restarts: {interrupt.restarts}; stopped at steps "
        f"{sorted(interrupt.stopped)}, resumed at {sorted(interrupt.resumed)}")
    assert interrupt.done == [("requeue", str(gpu_job)), ("time limit", str(gpu_job))], interrupt.done
    assert interrupt.restarts == 1
    shown = subprocess.run(["scontrol", "show", "job", "-o", str(gpu_job)], capture_output=True, text=True,
                           timeout=30).stdout
    assert "JobState=TIMEOUT" in shown or not shown.strip(), shown  # (the record is gone after MinJobAge)
    assert "DUE TO TIME LIMIT" in gpu_log.read_text()
    assert len(interrupt.stopped) == 2 and interrupt.stopped == interrupt.resumed, (interrupt.stopped, interrupt.resumed)
    first, second = sorted(interrupt.stopped)
    assert 3 <= first < 10 <= second < REQUEUE_STEPS
    state = tmp_path / "results" / "tiny" / "diffusion" / "state.pt"
    assert f"resuming from {state.relative_to(tmp_path)} at step {second}" in rule_log.read_text()
    assert steps_log.read_text().count("\n") == REQUEUE_STEPS  # every step logged once
    # ... and ended with the weights of an uninterrupted run of the same command
    import torch

    from pvdm.checkpoints import load_diffusion

    assert reference, "the reference run never started"
    t0 = time.monotonic()
    assert reference[0].wait(timeout=900) == 0, (tmp_path / "straight.log").read_text()[-3000:]
    say(pytestconfig, f"uninterrupted reference run: done {time.monotonic() - t0:.1f}s after the DAG")
    for name in ("model.pt", "ema.pt"):
        a = load_diffusion(straight / name).state_dict()
        b = load_diffusion(tmp_path / "results" / "tiny" / "diffusion" / name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
