"""Config loading and validation: unknown keys and wrong types fail early, naming key and file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

from pvdm.cli import main
from pvdm.config import ConfigError, experiment, experiment_from_json, load_config


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_repo_configs_validate():
    for name in ("config.yaml", "ucf101.yaml", "sky.yaml"):
        path = REPO / "config" / name
        if path.exists():
            cfg = load_config(path)
            assert cfg["experiments"]


def test_defaults_filled():
    cfg = load_config(REPO / "config" / "config.yaml")
    name, exp = experiment(cfg, None)
    assert name == "mnist"
    # keys the file does not set come from the schema's defaults
    assert exp["data"]["frame_stride"] == 1 and exp["data"]["fold"] == 1
    assert exp["data"]["moving_mnist"]["speed"] == 3.6 and exp["data"]["moving_mnist"]["digits_per_class"] is None
    assert exp["eval"]["rfvd"] is False and exp["diffusion"]["train"]["loss"] == "l2"


def test_unknown_key_names_key_and_file(tmp_path):
    p = write(tmp_path, "experiments:\n  a:\n    data:\n      dataset: moving_mnist\n      resolutoin: 64\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "experiments.a.data.resolutoin" in msg and "resolution" in msg


def test_wrong_type_and_enum(tmp_path):
    p = write(tmp_path, "experiments:\n  a:\n    data:\n      dataset: moving_mnist\n      resolution: big\n")
    with pytest.raises(
        ConfigError, match=r"experiments\.a\.data\.resolution: 'big' is not of type 'integer'"
    ):
        load_config(p)
    p = write(tmp_path, "experiments:\n  a:\n    data:\n      dataset: kinetics\n")
    with pytest.raises(ConfigError, match="kinetics"):
        load_config(p)


def test_overrides_and_experiment_choice(tmp_path):
    p = write(
        tmp_path, "experiments:\n  a:\n    data: {dataset: moving_mnist}\n  b:\n    data: {dataset: ucf101}\n"
    )
    cfg = load_config(p, ["experiments.a.data.resolution=32"])
    assert cfg["experiments"]["a"]["data"]["resolution"] == 32
    with pytest.raises(ConfigError, match="choose one with --exp"):
        experiment(cfg, None)
    with pytest.raises(ConfigError, match="'c' is not in the config"):
        experiment(cfg, "c")
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(p, ["oops"])


def test_settings_json_validated():
    exp = experiment_from_json(json.dumps({"seed": 1, "data": {"dataset": "moving_mnist"}}))
    assert exp["data"]["resolution"] == 64
    with pytest.raises(ConfigError, match="unknown key"):
        experiment_from_json(json.dumps({"seed": 1, "dataa": {}}))


def test_cli_error_is_clear(tmp_path, capsys):
    p = write(tmp_path, "experiments:\n  a:\n    data: {dataset: moving_mnist, clip_frame: 3}\n")
    assert main(["prepare", "--config", str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "clip_frame" in err and str(p) in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_cli_help():
    out = subprocess.run(
        [sys.executable, "-m", "pvdm.cli", "prepare", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "--settings" in out.stdout and "manifest.json" in out.stdout
