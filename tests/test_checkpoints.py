"""Checkpoints: the project format round trip, original PVDM autoencoder state dicts (bare, `module.`
prefixed, inside a training-state dict, config inferred from shapes), and clear errors."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pvdm.checkpoints import (
    CheckpointError,
    infer_autoencoder_config,
    load_autoencoder,
    save_autoencoder,
)
from pvdm.models.autoencoder import AutoencoderConfig, TriplaneAutoencoder

DATA = Path(__file__).parent / "data"

SMALL = AutoencoderConfig(resolution=32, frames=4, channels=16, depth=1, heads=2, dim_head=8, ff_mult=2,
                          embed_dim=3, proj_depth=1, proj_heads=2, proj_dim_head=8, proj_mlp_dim=32)
# The original's fixed head layout (TimeSformer 8 x 64, projections 4 x width/8) at a small width:
# the kind of file whose config can be inferred from shapes.
ORIGINAL_SMALL = AutoencoderConfig(resolution=32, frames=4, channels=16, depth=2, heads=8, dim_head=64, ff_mult=4,
                                   embed_dim=4, proj_depth=2, proj_heads=4, proj_dim_head=2, proj_mlp_dim=512)


def make(cfg: AutoencoderConfig, seed: int = 0) -> TriplaneAutoencoder:
    torch.manual_seed(seed)
    return TriplaneAutoencoder(cfg).eval()


def video(cfg: AutoencoderConfig) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, cfg.frames, cfg.resolution, cfg.resolution, generator=g) * 2 - 1


def assert_same_function(a: TriplaneAutoencoder, b: TriplaneAutoencoder) -> None:
    x = video(a.cfg)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_project_checkpoint_round_trip(tmp_path):
    model = make(replace(SMALL, gradient_checkpointing=True))
    path = tmp_path / "sub" / "ae.pt"
    save_autoencoder(model, path, extra={"step": 12})
    assert [p.name for p in path.parent.iterdir()] == ["ae.pt"]  # atomic write: no temp file left
    obj = torch.load(path, weights_only=True)
    assert obj["kind"] == "autoencoder" and obj["format_version"] == 1 and obj["step"] == 12
    assert obj["config"] == model.cfg.to_dict()
    loaded = load_autoencoder(path)
    assert loaded.cfg == model.cfg and not loaded.training
    assert_same_function(loaded, model)
    # cfg overrides the stored config, e.g. to switch checkpointing off
    assert not load_autoencoder(path, cfg=SMALL).cfg.gradient_checkpointing


@pytest.mark.parametrize("wrap", ["bare", "module.", "training_state", "original_format"])
def test_original_style_state_dicts_load(tmp_path, wrap):
    model = make(SMALL)
    state = model.state_dict()
    path = tmp_path / "model_last.pth"
    if wrap == "bare":
        torch.save(state, path)
    elif wrap == "module.":  # net_meta.pth is saved from the DDP wrapper
        torch.save({"module." + k: v for k, v in state.items()}, path)
    elif wrap == "training_state":
        torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "step": 3}, path)
    else:
        save_autoencoder(model, path, original_format=True)
        assert set(torch.load(path, weights_only=True)) == set(state)
    assert_same_function(load_autoencoder(path, cfg=SMALL), model)
    with pytest.raises(CheckpointError, match="pass cfg"):  # heads of this small model are not the original's
        load_autoencoder(path)


def test_original_layout_config_is_inferred_from_shapes(tmp_path):
    model = make(ORIGINAL_SMALL)
    path = tmp_path / "model_10000.pth"
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, path)
    loaded = load_autoencoder(path)
    assert loaded.cfg == ORIGINAL_SMALL
    assert_same_function(loaded, model)


def test_paper_config_is_inferred_from_the_reference_key_shapes():
    ref = json.loads((DATA / "pvdm_autoencoder_keys.json").read_text())["autoencoder"]
    state = {e["key"]: torch.empty(e["shape"], device="meta") for e in ref["keys"]}
    assert infer_autoencoder_config(state) == AutoencoderConfig.paper()


@pytest.mark.slow
def test_file_with_the_reference_keys_loads_as_the_paper_model(tmp_path):
    """A stand-in for the released checkpoint: random tensors under exactly the original's keys."""
    ref = json.loads((DATA / "pvdm_autoencoder_keys.json").read_text())["autoencoder"]
    g = torch.Generator().manual_seed(0)
    state = {e["key"]: torch.randn(e["shape"], generator=g) * 0.02 for e in ref["keys"]}
    torch.save(state, tmp_path / "ucf_ae.pth")
    model = load_autoencoder(tmp_path / "ucf_ae.pth")
    assert model.cfg == AutoencoderConfig.paper()
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_key_mismatches_are_listed(tmp_path):
    state = make(SMALL).state_dict()
    broken = {k: v for k, v in state.items() if k != "xy_token"}
    broken["decoder.extra.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "a.pth")
    with pytest.raises(CheckpointError, match=r"a\.pth.*1 missing keys: \['xy_token'\].*1 unexpected keys: "
                                              r"\['decoder\.extra\.weight'\]"):
        load_autoencoder(tmp_path / "a.pth", cfg=SMALL)
    with pytest.raises(CheckpointError, match=r"shape mismatches: \['xy_token: file \[1, 1, 16\] vs model \[1, 1, 24\]"):
        torch.save(state, tmp_path / "b.pth")
        load_autoencoder(tmp_path / "b.pth", cfg=replace(SMALL, channels=24))


def test_files_that_are_not_checkpoints_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_autoencoder(tmp_path / "missing.pt")
    (tmp_path / "notes.pt").write_text("hello, not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"notes\.pt: not a readable PyTorch checkpoint"):
        load_autoencoder(tmp_path / "notes.pt")
    # a pickle that would run code is refused by weights_only loading
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump(Path("/"), f, protocol=2)
    with pytest.raises(CheckpointError, match=r"evil\.pt: not a readable PyTorch checkpoint"):
        load_autoencoder(tmp_path / "evil.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match=r"tensor\.pt: not a checkpoint \(loaded a Tensor"):
        load_autoencoder(tmp_path / "tensor.pt")
    torch.save({"step": 3, "lr": 0.1}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match=r"meta\.pt: no model state dict found.*\['lr', 'step'\]"):
        load_autoencoder(tmp_path / "meta.pt")
    torch.save({"xy_token": torch.zeros(1, 1, 8)}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"partial\.pt: not a PVDM autoencoder state dict"):
        load_autoencoder(tmp_path / "partial.pt")


def test_wrong_kind_version_or_config_is_clear(tmp_path):
    model = make(SMALL)
    save_autoencoder(model, tmp_path / "ae.pt")
    obj = torch.load(tmp_path / "ae.pt", weights_only=True)
    torch.save({**obj, "kind": "diffusion"}, tmp_path / "kind.pt")
    with pytest.raises(CheckpointError, match="kind is 'diffusion', expected 'autoencoder'"):
        load_autoencoder(tmp_path / "kind.pt")
    torch.save({**obj, "format_version": 99}, tmp_path / "version.pt")
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_autoencoder(tmp_path / "version.pt")
    torch.save({**obj, "config": {**obj["config"], "width": 3}}, tmp_path / "config.pt")
    with pytest.raises(CheckpointError, match=r"config\.pt: bad autoencoder config.*\['width'\]"):
        load_autoencoder(tmp_path / "config.pt")
