"""Several nodes without a cluster: two launchers on this machine (``pvdm --nnodes 2``, one process
each, gloo, the rendezvous store of node 0 on localhost) are what two Slurm nodes run. They end
where one process of the same global batch ends (autoencoder stage 1, GAN stage, diffusion; same
bounds as tests/test_distributed.py, whose fixtures and reasoning this reuses), a run whose second
node dies stops on the first node instead of hanging, and rerunning both launchers resumes it
bit-for-bit; a node that never starts is a timeout error naming it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from test_distributed import ENV, assert_same_training, data, make_exp, max_diff, pvdm  # noqa: F401 - data: fixture

from pvdm.checkpoints import load_autoencoder, load_diffusion


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(node: int, port: int, *args: str, timeout_s: int = 120) -> list[str]:
    return [sys.executable, "-m", "pvdm.cli", "--nnodes", "2", "--node-rank", str(node), "--rdzv-endpoint",
            f"127.0.0.1:{port}", "--rdzv-timeout", str(timeout_s), *args]


def two_nodes(*args: str, timeout: int = 900) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """Both launchers of a 2-node run, node 1 started a moment after node 0 (as srun may)."""
    port = free_port()
    procs = []
    for node in (0, 1):
        procs.append(subprocess.Popen(launcher(node, port, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=ENV))
        time.sleep(1)
    outs = [p.communicate(timeout=timeout) for p in procs]
    return tuple(subprocess.CompletedProcess(p.args, p.returncode, o, e) for p, (o, e) in zip(procs, outs, strict=True))


@pytest.mark.slow
def test_two_launchers_end_where_one_process_ends(data, tmp_path):  # noqa: F811 - the imported fixture
    common = ["--settings", json.dumps(make_exp()), "--data", str(data)]
    stages = [("train-autoencoder", "s1", []), ("finetune-gan", "gan", ["--init", str(tmp_path / "s1_1" / "model.pt")]),
              ("train-diffusion", "d", ["--autoencoder", str(tmp_path / "gan_1" / "model.pt")])]
    for command, name, extra in stages:  # both runs of a stage start from the 1-process weights of the last
        one = pvdm(1, command, *common, *extra, "--out", str(tmp_path / f"{name}_1"))
        assert one.returncode == 0, one.stderr[-3000:]
        node0, node1 = two_nodes(command, *common, *extra, "--out", str(tmp_path / f"{name}_2"))
        assert node0.returncode == 0 and node1.returncode == 0, node0.stderr[-3000:] + node1.stderr[-3000:]
        assert "on node 0 of 2" in node0.stderr and "on node 1 of 2" in node1.stderr
        assert "processes: 2 (gloo)" in node0.stderr  # rank 0 sees a world of 2 over the two launchers
    gan = {n: torch.load(tmp_path / f"gan_{n}" / "state.pt", weights_only=True) for n in (1, 2)}
    weights = {n: {"stage1": load_autoencoder(tmp_path / f"s1_{n}" / "model.pt").state_dict(),
                   "gan autoencoder": gan[n]["model"], "discriminator_2d": gan[n]["discriminator_2d"],
                   "discriminator_3d": gan[n]["discriminator_3d"],
                   "diffusion": load_diffusion(tmp_path / f"d_{n}" / "model.pt").state_dict(),
                   "ema": load_diffusion(tmp_path / f"d_{n}" / "ema.pt").state_dict()} for n in (1, 2)}
    for part in weights[1]:
        assert_same_training(weights[1][part], weights[2][part], f"2 nodes: {part}",
                             discriminator=part.startswith("discriminator"))


@pytest.mark.slow
def test_run_whose_node_dies_stops_and_resumes(data, tmp_path):  # noqa: F811 - the imported fixture
    exp = make_exp()
    exp["diffusion"]["train"]["steps"] = 16
    common = ["--settings", json.dumps(exp), "--data", str(data)]
    assert pvdm(1, "train-autoencoder", *common, "--out", str(tmp_path / "ae")).returncode == 0
    args = ["train-diffusion", *common, "--autoencoder", str(tmp_path / "ae" / "model.pt")]
    straight = two_nodes(*args, "--out", str(tmp_path / "straight"))
    assert all(r.returncode == 0 for r in straight), straight[0].stderr[-3000:] + straight[1].stderr[-3000:]

    out, port = tmp_path / "killed", free_port()
    log, state = out / "log.jsonl", out / "state.pt"
    node0 = subprocess.Popen(launcher(0, port, *args, "--out", str(out)), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=ENV)
    node1 = subprocess.Popen(launcher(1, port, *args, "--out", str(out)), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    deadline = time.monotonic() + 600
    while not (log.exists() and log.read_text().count("\n") >= 3) and node1.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # node 1 fails as a machine does: its launcher and its worker die at once
    os.killpg(node1.pid, signal.SIGKILL)
    node1.wait()
    assert node1.returncode == -signal.SIGKILL, "the run finished before node 1 could be killed"
    t0 = time.monotonic()
    _, err = node0.communicate(timeout=300)  # node 0 notices (its collective fails), it does not hang
    print(f"node 0 stopped {time.monotonic() - t0:.1f} s after node 1 died, exit code {node0.returncode}")
    assert node0.returncode not in (0, None, 75), err[-3000:]
    killed_at = torch.load(state, weights_only=True)["step"]
    assert 2 <= killed_at < 16
    again = two_nodes(*args, "--out", str(out))
    assert all(r.returncode == 0 for r in again), again[0].stderr[-3000:] + again[1].stderr[-3000:]
    assert f"resuming from {state} at step {killed_at}" in again[0].stderr
    a = load_diffusion(tmp_path / "straight" / "model.pt").state_dict()
    b = load_diffusion(out / "model.pt").state_dict()
    assert max_diff(a, b) == 0.0  # the same 2-node run, interrupted or not


def test_a_node_that_never_starts_is_a_timeout_error_naming_it(tmp_path):
    args = ["train-diffusion", "--settings", "{}", "--data", str(tmp_path), "--autoencoder", "x.pt",
            "--out", str(tmp_path / "out")]
    port = free_port()
    t0 = time.monotonic()
    alone = subprocess.run(launcher(0, port, *args, timeout_s=1), capture_output=True, text=True, env=ENV, timeout=60)
    assert alone.returncode == 1 and time.monotonic() - t0 < 30
    assert alone.stderr.strip().splitlines()[-1] == (
        f"pvdm train-diffusion: error: rendezvous at 127.0.0.1:{port} timed out after 1 s: 1 of 2 nodes joined; "
        "missing: node 1 (its launcher did not start or cannot reach this host)")
    orphan = subprocess.run(launcher(1, port, *args, timeout_s=1), capture_output=True, text=True, env=ENV, timeout=60)
    assert orphan.returncode == 1
    assert f"node 1 could not reach node 0's rendezvous store at 127.0.0.1:{port} within 1 s" in orphan.stderr
    assert "Traceback" not in alone.stderr + orphan.stderr and "frame #" not in orphan.stderr
    # outside Slurm, a node needs to be told which it is and where node 0 is
    cmd = [sys.executable, "-m", "pvdm.cli", "--nnodes", "2", *args]
    env = {k: v for k, v in ENV.items() if not k.startswith("SLURM_")}
    bare = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert bare.returncode == 2 and "--nnodes 2: which node is this? Pass --node-rank" in bare.stderr
    bare = subprocess.run(cmd[:3] + ["--node-rank", "1"] + cmd[3:], capture_output=True, text=True, env=env, timeout=60)
    assert bare.returncode == 2 and "--nnodes 2: pass --rdzv-endpoint HOST:PORT" in bare.stderr


class EndsBetweenLooks:
    """A worker that is still running at the launcher's first look and has failed at the next."""

    def __init__(self, code: int, running_looks: int):
        self.looks, self.code, self.running_looks, self.returncode = 0, code, running_looks, None

    def poll(self) -> int | None:
        self.looks += 1
        if self.looks > self.running_looks:
            self.returncode = self.code
        return self.returncode

    def terminate(self) -> None:
        pass

    kill = terminate


def test_a_worker_that_fails_between_two_looks_fails_the_launcher():
    from pvdm.train.launch import _wait

    # seen running by the loop's condition and by the check of each worker, then gone: an earlier
    # launcher left its loop on the next look and returned 0 for a failed run
    assert _wait([EndsBetweenLooks(1, running_looks=2)]) == 1
    assert _wait([EndsBetweenLooks(0, running_looks=2), EndsBetweenLooks(75, running_looks=2)]) == 75
    assert _wait([EndsBetweenLooks(0, running_looks=2)]) == 0
