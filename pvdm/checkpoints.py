"""Model checkpoints: this project's format, and import of the original PVDM ``.pth`` files.

Project format (one ``torch.save``d dict, read with ``weights_only=True``)::

    {"format_version": 1, "kind": "autoencoder" | ..., "config": {<model config dict>}, "model": <state dict>}

Original PVDM files are bare state dicts (``torch.save(model.state_dict())``), sometimes saved from a
DDP wrapper (every key prefixed ``module.``). Our modules use the original parameter names, so
both load into the same classes; only the config has to come from elsewhere (the caller, or the
tensor shapes).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pvdm.models.autoencoder import AutoencoderConfig, TriplaneAutoencoder
from pvdm.models.unet import TriplaneUNet, UNetConfig
from pvdm.utils.io import atomic_torch_save

FORMAT_VERSION = 1
# Wrappers that prefix every key: DDP / DataParallel, and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Keys under which a training-state dict may hold the model's state dict.
STATE_DICT_KEYS = ("model", "state_dict")


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint for the requested model; the message names the file."""


# ---------------------------------------------------------------------------------------------
# Generic helpers


def load_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``; unreadable or unsafe files raise CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # garbage input surfaces as many exception types (KeyError, UnpicklingError, ...)
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (loaded with weights_only=True): {e}"
        ) from e


def is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def strip_wrapper_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove a ``module.`` / ``_orig_mod.`` prefix shared by every key (repeatedly, e.g. DDP around compile)."""
    state = dict(state)
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def unpack_checkpoint(obj: Any, path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Split a loaded checkpoint into (state dict without wrapper prefixes, project header or None).

    Accepts this project's format (header = the dict without "model"), a bare state dict, or a
    training-state dict that holds the state dict under "model" or "state_dict" (header None).
    """
    if isinstance(obj, Mapping) and "format_version" in obj and "kind" in obj:
        if obj["format_version"] != FORMAT_VERSION:
            raise CheckpointError(
                f"{path}: checkpoint format_version {obj['format_version']!r}; this code reads {FORMAT_VERSION}"
            )
        if not is_state_dict(obj.get("model")):
            raise CheckpointError(f"{path}: project checkpoint without a 'model' state dict")
        header = {k: v for k, v in obj.items() if k != "model"}
        return strip_wrapper_prefix(obj["model"]), header
    if is_state_dict(obj):
        return strip_wrapper_prefix(obj), None
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if is_state_dict(obj.get(key)):
                return strip_wrapper_prefix(obj[key]), None
        keys = sorted(map(str, obj))[:20]
        raise CheckpointError(
            f"{path}: no model state dict found (expected a state dict of tensors, a project checkpoint, or a "
            f"dict with one of the keys {list(STATE_DICT_KEYS)}); top-level keys: {keys}"
        )
    raise CheckpointError(f"{path}: not a checkpoint (loaded a {type(obj).__name__}, expected a dict)")


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """``load_state_dict(strict=True)`` with an error that lists missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {list(state[k].shape)} vs model {list(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        for name, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
            if items:
                more = f" ... (+{len(items) - 10} more)" if len(items) > 10 else ""
                parts.append(f"{len(items)} {name}: {items[:10]}{more}")
        raise CheckpointError(
            f"{path}: state dict does not match {type(model).__name__}: " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=True)


def check_finite(state: Mapping[str, torch.Tensor], path: str | os.PathLike, verb: str = "holds") -> None:
    """A model with NaN or infinite weights makes black videos and meaningless metrics without an
    error: every reader and writer of a checkpoint refuses one, naming the file."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise CheckpointError(f"{path}: {verb} non-finite weights (NaN or inf) in {len(bad)} of {len(state)} tensors: "
                              f"{', '.join(bad[:3])}{more}; the model diverged or the file is corrupt")


def save_project_checkpoint(path: str | os.PathLike, kind: str, model: nn.Module, config: dict[str, Any],
                            extra: dict[str, Any] | None = None) -> None:
    """Write ``{"format_version", "kind", "config", "model", **extra}`` atomically (finite weights only)."""
    check_finite(model.state_dict(), path, "would hold")
    obj: dict[str, Any] = {"format_version": FORMAT_VERSION, "kind": kind, "config": dict(config)}
    obj.update(extra or {})
    obj["model"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save(obj, path)


def _build(model_cls: type[nn.Module], cfg_cls: type, kind: str, state: dict[str, torch.Tensor],
           header: dict[str, Any] | None, cfg: Any, path: str | os.PathLike,
           map_location: str | torch.device, infer: Any) -> Any:
    """The model of a loaded state dict: config given, else from the project header, else inferred
    from the shapes of an original file. Returned in eval mode."""
    if header is not None and header.get("kind") != kind:
        raise CheckpointError(f"{path}: checkpoint kind is {header.get('kind')!r}, expected {kind!r}")
    if cfg is None:
        if header is not None:
            try:
                cfg = cfg_cls.from_dict(header.get("config", {}))
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"{path}: bad {kind} config: {e}") from e
        else:
            cfg = infer(state, path)
    check_finite(state, path)
    model = model_cls(cfg)
    load_state_dict_strict(model, state, path)
    return model.to(map_location).eval()


# ---------------------------------------------------------------------------------------------
# Autoencoder


def save_autoencoder(model: TriplaneAutoencoder, path: str | os.PathLike, extra: dict[str, Any] | None = None,
                     original_format: bool = False) -> None:
    """Save in the project format (kind "autoencoder", config = ``model.cfg.to_dict()``), or with
    ``original_format`` as the bare state dict the original PVDM code writes (no config, no extra)."""
    if original_format:
        if extra:
            raise ValueError("original_format checkpoints hold the state dict only; extra is not allowed")
        atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
    else:
        save_project_checkpoint(path, "autoencoder", model, model.cfg.to_dict(), extra)


def load_autoencoder(path: str | os.PathLike, cfg: AutoencoderConfig | None = None,
                     map_location: str | torch.device = "cpu") -> TriplaneAutoencoder:
    """Load a project autoencoder checkpoint or an original PVDM autoencoder state dict.

    ``cfg`` overrides the stored config (it must describe the same architecture, e.g. to switch on
    gradient checkpointing). For a file without a config (original PVDM), ``cfg=None`` infers the
    config from the tensor shapes (see ``infer_autoencoder_config``). Returns the model in eval mode.
    """
    state, header = unpack_checkpoint(load_file(path, map_location), path)
    return _build(TriplaneAutoencoder, AutoencoderConfig, "autoencoder", state, header, cfg, path, map_location,
                  infer_autoencoder_config)


def infer_autoencoder_config(state: Mapping[str, torch.Tensor],
                             path: str | os.PathLike = "<state dict>") -> AutoencoderConfig:
    """Config of an original PVDM ``ViTAutoencoder`` state dict, from its tensor shapes.

    Sizes (width, frames, patch, resolution, depths, latent channels, MLP widths) come from the
    shapes. Head counts are not visible in shapes; the original hard-codes them (TimeSformer 8 heads
    x 64, projections 4 heads x width/8), so a file whose attention widths do not fit that
    needs an explicit ``cfg``. Paper base.yaml shapes give exactly ``AutoencoderConfig.paper()``.
    """
    needed = ["xy_token", "xy_pos_embedding", "xt_pos_embedding", "to_pixel.1.weight", "pre_xy.weight",
              "encoder.layers.0.0.fn.to_qkv.weight", "encoder.layers.0.2.fn.net.0.weight",
              "xy_quant_attn.layers.0.0.fn.to_qkv.weight", "xy_quant_attn.layers.0.1.fn.net.0.weight"]
    missing = [k for k in needed if k not in state]
    if missing:
        raise CheckpointError(
            f"{path}: not a PVDM autoencoder state dict (missing {missing}); pass cfg if it is one with other keys"
        )
    width = state["xy_token"].shape[-1]
    attn_inner = state["encoder.layers.0.0.fn.to_qkv.weight"].shape[0] // 3
    proj_inner = state["xy_quant_attn.layers.0.0.fn.to_qkv.weight"].shape[0] // 3
    if attn_inner != 8 * 64 or proj_inner % 4 != 0:
        raise CheckpointError(
            f"{path}: attention widths {attn_inner} / {proj_inner} do not match the original's fixed head "
            f"counts (8 x 64, 4 x width/8); head counts cannot be read from shapes, pass cfg explicitly"
        )
    patch = state["to_pixel.1.weight"].shape[-1]
    side = state["xt_pos_embedding"].shape[1] - 1

    def count_layers(prefix: str) -> int:
        pattern = re.compile(re.escape(prefix) + r"\.layers\.(\d+)\.")
        return len({m.group(1) for k in state if (m := pattern.match(k))})

    depth, decoder_depth = count_layers("encoder"), count_layers("decoder")
    if depth != decoder_depth:
        raise CheckpointError(f"{path}: encoder has {depth} layers but decoder {decoder_depth}; pass cfg explicitly")
    try:
        return AutoencoderConfig(
            resolution=side * patch,
            frames=state["xy_pos_embedding"].shape[1] - 1,
            patch_size=patch,
            channels=width,
            depth=depth,
            heads=8,
            dim_head=64,
            ff_mult=state["encoder.layers.0.2.fn.net.0.weight"].shape[0] // (2 * width),
            embed_dim=state["pre_xy.weight"].shape[0],
            proj_depth=count_layers("xy_quant_attn"),
            proj_heads=4,
            proj_dim_head=proj_inner // 4,
            proj_mlp_dim=state["xy_quant_attn.layers.0.1.fn.net.0.weight"].shape[0],
        )
    except ValueError as e:
        raise CheckpointError(f"{path}: cannot infer an autoencoder config from the shapes: {e}") from e


# ---------------------------------------------------------------------------------------------
# Diffusion U-Net

ORIGINAL_DIFFUSION_PREFIX = "diffusion_model."  # the original's DiffusionWrapper attribute


def save_diffusion(model: TriplaneUNet, path: str | os.PathLike, extra: dict[str, Any] | None = None,
                   original_format: bool = False) -> None:
    """Save in the project format (kind "diffusion", config = ``model.cfg.to_dict()``).

    ``original_format=True`` writes what the original code saves and loads instead: a bare state
    dict with every key prefixed ``diffusion_model.`` (no config; ``extra`` is not allowed).
    """
    if not original_format:
        save_project_checkpoint(path, "diffusion", model, model.cfg.to_dict(), extra)
        return
    if extra:
        raise ValueError("save_diffusion: extra metadata cannot be stored in the original (bare state dict) format")
    state = {ORIGINAL_DIFFUSION_PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save(state, path)


def load_diffusion(path: str | os.PathLike, cfg: UNetConfig | None = None,
                   map_location: str | torch.device = "cpu") -> TriplaneUNet:
    """Load a project diffusion checkpoint or an original PVDM diffusion file (raw or EMA).

    Original files are ``DiffusionWrapper`` state dicts: keys prefixed ``diffusion_model.``, possibly
    under ``module.`` (DDP). Without ``cfg`` such a file must be the paper's base.yaml U-Net
    (conditional or not, told by the ``zeros`` buffer); other widths need an explicit ``cfg``.
    ``cfg`` also overrides a project file's stored config. Returns the model in eval mode.
    """
    state, header = unpack_checkpoint(load_file(path, map_location), path)
    if state and all(k.startswith(ORIGINAL_DIFFUSION_PREFIX) for k in state):
        state = {k[len(ORIGINAL_DIFFUSION_PREFIX):]: v for k, v in state.items()}
    return _build(TriplaneUNet, UNetConfig, "diffusion", state, header, cfg, path, map_location,
                  infer_diffusion_config)


def infer_diffusion_config(state: Mapping[str, torch.Tensor],
                           path: str | os.PathLike = "<state dict>") -> UNetConfig:
    """``UNetConfig.paper(cond)`` if ``state`` (prefix already stripped) has exactly its keys and shapes.

    Head counts and plane sizes are not all visible in the shapes, so only the shipped config is
    recognised; anything else raises CheckpointError asking for ``cfg``.
    """
    if "input_blocks.0.0.weight" not in state or "out.2.weight" not in state:
        raise CheckpointError(
            f"{path}: not a PVDM diffusion state dict (no input_blocks.0.0.weight / out.2.weight, with or "
            f"without the '{ORIGINAL_DIFFUSION_PREFIX}' prefix)"
        )
    cfg = UNetConfig.paper(cond="zeros" in state)
    with torch.device("meta"):
        expected = TriplaneUNet(cfg).state_dict()
    same = expected.keys() == state.keys() and all(state[k].shape == v.shape for k, v in expected.items())
    if not same:
        width = state["input_blocks.0.0.weight"].shape[0]
        raise CheckpointError(
            f"{path}: diffusion state dict is not the paper's base.yaml U-Net (model_channels {width}, "
            f"{len(state)} tensors); pass cfg=UNetConfig(...) describing it"
        )
    return cfg


# ---------------------------------------------------------------------------------------------
# Import of the released PVDM checkpoints


def import_pvdm(
    autoencoder: str | os.PathLike, diffusion: str | os.PathLike, out_dir: str | os.PathLike,
    autoencoder_config: dict[str, Any] | None = None, diffusion_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Turn the original PVDM files (bare state dicts) into this project's checkpoints.

    Writes ``out_dir/autoencoder.pt``, ``out_dir/diffusion.pt`` and ``out_dir/import.json`` (source
    paths and sha256). The released files are the paper configs, recognised from their shapes;
    other original-format files need their configs (the U-Net's plane sizes come from the
    autoencoder).
    """
    from pvdm.utils.io import atomic_write_json, sha256_file

    out = Path(out_dir)
    ae_cfg = AutoencoderConfig.from_dict(autoencoder_config) if autoencoder_config else None
    ae = load_autoencoder(autoencoder, cfg=ae_cfg)
    unet_cfg = None
    if diffusion_config:
        unet_cfg = UNetConfig.from_dict({**diffusion_config, "in_channels": ae.cfg.embed_dim,
                                         "latent_side": ae.cfg.latent_side, "latent_frames": ae.cfg.frames})
    unet = load_diffusion(diffusion, cfg=unet_cfg)
    planes = (unet.cfg.in_channels, unet.cfg.latent_side, unet.cfg.latent_frames)
    if planes != (ae.cfg.embed_dim, ae.cfg.latent_side, ae.cfg.frames):
        raise CheckpointError(
            f"{diffusion}: U-Net expects latents (channels, side, frames) = {planes}, the autoencoder {autoencoder} "
            f"makes {(ae.cfg.embed_dim, ae.cfg.latent_side, ae.cfg.frames)}"
        )
    record = {
        "autoencoder": {"source": str(autoencoder), "sha256": sha256_file(autoencoder), "config": ae.cfg.to_dict()},
        "diffusion": {"source": str(diffusion), "sha256": sha256_file(diffusion), "config": unet.cfg.to_dict()},
    }
    save_autoencoder(ae, out / "autoencoder.pt", extra={"imported_from": record["autoencoder"]["source"],
                                                        "source_sha256": record["autoencoder"]["sha256"]})
    save_diffusion(unet, out / "diffusion.pt", extra={"imported_from": record["diffusion"]["source"],
                                                      "source_sha256": record["diffusion"]["sha256"]})
    atomic_write_json(out / "import.json", record)
    return record
