"""The CI subset of the kill matrix (tests/kill_matrix.py): Snakemake killed mid-training (the rerun
must stop at Snakemake's lock, then at the output folder's lock while the orphan lives), then the
stage-1 autoencoder job SIGKILLed at a seeded moment; every file under results/ loads after each kill
and every artifact equals an uninterrupted run's. Then the settings change and that rerun is killed
too: every artifact must equal an uninterrupted run of the new settings. The full matrix (every stage, five kills each) is
`python tests/kill_matrix.py`; its last result is benchmarks/results/kill_matrix.json."""

from __future__ import annotations

import pytest
from kill_matrix import run_campaign

pytestmark = pytest.mark.slow


def test_kill_matrix_subset(tmp_path):
    result = run_campaign(tmp_path, kills=1, stages=["train_autoencoder"], seed=0,
                          target="results/tiny/autoencoder/stage1/model.pt", say=lambda line: None)
    assert result["unloadable_after_any_kill"] == 0, [t["unloadable"] for t in result["trials"]]
    assert result["kills_landed_per_stage"] == {"train_autoencoder": 1}, result["trials"]
    sm = result["snakemake_kill"]
    assert sm["orphans"] >= 1 and sm["rerun_rc"] != 0 and sm["rerun_stopped_by_snakemake_lock"], sm
    assert sm["after_unlock_rc"] != 0 and sm["after_unlock_stopped_by_folder_lock"], sm
    # state.pt and model.pt of stage 1, the three clip stores
    assert result["artifacts_compared"] >= 5 and result["mismatches"] == []
    # then the settings change (new clip stores, another learning rate) and that rerun is killed in
    # stage 1: the end result is a straight run of the new settings, nothing of the old one resumed
    changed = result["changed_setting"]
    assert changed["kills_landed"] == 1 and changed["artifacts_compared"] >= 5 and changed["mismatches"] == []
