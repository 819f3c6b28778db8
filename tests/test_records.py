"""Metric records: the JSON eval writes is what the report reads; malformed files name the file and key."""

from __future__ import annotations

import json

import pytest
from conftest import DATA

from pvdm.eval.records import FVDRecord, RealFloor, ReconRecord, RecordError

REPORT = DATA / "report"


def test_round_trips_keep_the_on_disk_format(tmp_path):
    for name in ("ucf_ours_fvd16.json", "sky_released_fvd16.json"):
        on_disk = json.loads((REPORT / name).read_text())
        record = FVDRecord.read(REPORT / name)
        assert isinstance(record.real_floor, RealFloor) and record.interval95[0] < record.interval95[1]
        record.write(tmp_path / name)
        assert json.loads((tmp_path / name).read_text()) == on_disk  # nothing added, nothing lost
    recon = ReconRecord.read(REPORT / "ucf_ours_recon.json")
    assert recon.rfvd is not None and recon.split == "test" and recon.num_videos > 0
    recon.write(tmp_path / "recon.json")
    assert ReconRecord.read(tmp_path / "recon.json") == recon


def test_files_written_before_the_fixed_n_interval_still_read(tmp_path):
    # Metric files from before the half-sample interval name its description "bootstrap".
    m = json.loads((REPORT / "ucf_ours_fvd16.json").read_text())
    m["bootstrap"] = m.pop("interval")
    del m["expected_bias"]
    (tmp_path / "old.json").write_text(json.dumps(m))
    record = FVDRecord.read(tmp_path / "old.json")
    assert record.interval == m["bootstrap"] and record.expected_bias is None
    assert record.interval95 == tuple(m["interval95"])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(value="12"), r"fvd\.json: 'value' must be a finite number, got '12'"),
        (lambda m: m.update(interval95=[1.0]), r"fvd\.json: 'interval95' must be null or \[lo, hi\]"),
        (lambda m: m.update(protocol=None), r"fvd\.json: 'protocol' must be an object"),
        (lambda m: m["real_floor"].update(value=float("nan")), r"fvd\.json real_floor: 'value' must be a finite"),
    ],
)
def test_malformed_fvd_files_name_file_and_key(tmp_path, edit, message):
    m = json.loads((REPORT / "ucf_ours_fvd16.json").read_text())
    edit(m)
    (tmp_path / "fvd.json").write_text(json.dumps(m))
    with pytest.raises(RecordError, match=message):
        FVDRecord.read(tmp_path / "fvd.json")


def test_unreadable_files(tmp_path):
    (tmp_path / "torn.json").write_text('{"value": 1')
    with pytest.raises(RecordError, match=r"torn\.json: not valid JSON .*rerun the job that wrote it"):
        FVDRecord.read(tmp_path / "torn.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(RecordError, match=r"list\.json: expected a JSON object, got list"):
        ReconRecord.read(tmp_path / "list.json")
    m = json.loads((REPORT / "ucf_ours_recon.json").read_text())
    m["num_videos"] = 2.5
    (tmp_path / "recon.json").write_text(json.dumps(m))
    with pytest.raises(RecordError, match=r"recon\.json: 'num_videos' must be an integer, got 2\.5"):
        ReconRecord.read(tmp_path / "recon.json")
