"""C3D fine-tuned on UCF-101: the classifier behind the video Inception Score (TGANv2, StyleGAN-V ``isv2048_ucf``).

This is a PyTorch re-implementation of TGANv2's ``C3DVersion1UCF101`` (pfnet-research/tgan2@f892bc4
``tgan2/models/c3d/c3d_ucf101.py``), the network StyleGAN-V's ``c3d_ucf101.pt`` TorchScript reproduces.

Network (Caffe C3D "deepnetA", all convs 3x3x3 stride 1 pad 1 with bias, ReLU after every conv and fc6/fc7):
  [B, 3, 16, 112, 112] -> conv1a 64 -> pool1 (1,2,2) -> conv2a 128 -> pool2 (2,2,2) -> conv3a 256, conv3b 256
  -> pool3 -> conv4a 512, conv4b 512 -> pool4 -> conv5a 512, conv5b 512 -> pool5 (2,2,2) -> [B, 512, 1, 4, 4]
  -> flatten (c t h w) 8192 -> fc6 4096 -> fc7 4096 -> fc8 101 -> softmax.
  Pools are max pools with stride = kernel and Chainer's default ``cover_all=True``, i.e. ceil mode: pool5
  turns 2x7x7 into 1x4x4 (hence fc6's 512*4*4 inputs). Dropout after pool5/fc6/fc7 is off at eval time.

Preprocessing (the ``pre`` + ``_resize`` + ``mean`` stages of the Chainer model):
  tgan2 feeds floats in [-1, 1]; ``pre`` is a fixed 1x1x1 conv that swaps RGB -> BGR and multiplies by 128;
  frames are resized to 112x112 with Chainer 6's ``F.resize_images`` (bilinear, corners aligned:
  src = dst*(in-1)/(out-1), no antialias); then the bias ``128 - mean[:, :, 8:120, 8:120]`` is added, with
  ``mean`` the (3, 16, 128, 171) BGR mean clip of ``mean2.npz`` (note the crop is [8:120] in *both* axes, not
  centred in width). Net effect: the network sees BGR pixel values minus the mean clip. tgan2's real-data
  loader maps uint8 p to (p-128)/128, so a uint8 pixel reaches the network as exactly p - mean; this is our
  default ``mapping="tgan2"``. ``mapping="unit"`` (p/127.5 - 1, as some third-party scripts do) gives
  p*256/255 - mean instead (0.4% scale difference). T must be 16 (the mean clip has 16 frames).

What was verified and what was not (no real weights are reachable offline, docs/evaluation.md#c3d):
  - verified against the published Chainer code: layer list and shapes, padding, pooling (ceil mode), ReLU
    placement, the fc sizes, the RGB->BGR/x128/mean-bias preprocessing, the resize convention (read in
    chainer/chainer@v6.0.0 ``chainer/functions/array/resize_images.py``, the version tgan2 pins) and the
    npz key layout that ``chainer.serializers.save_npz`` writes (``conv1a/W``, ``conv1a/b``, ..., ``fc8/b``;
    Chainer's ConvolutionND/Linear store W as (out, in, kd, kh, kw)/(out, in), the PyTorch layout);
  - inferred, not seen: ``mean2.npz`` holds one array ``mean`` of shape (3, 16, 128, 171) (from tgan2's crop
    into a (3, 16, 112, 112) bias and third-party scripts reshaping it to (3, 1, 16, 128, 171));
  - not verified: outputs against the real checkpoint or StyleGAN-V's TorchScript (not downloadable here),
    and how that TorchScript maps uint8 to [-1, 1]. No sha256 of the archives is published anywhere we could
    find; ``PUBLISHED_SHA256`` stays empty and the hashes seen are recorded in the converted file instead.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pvdm.utils.io import atomic_path, atomic_write_text, sha256_file
from pvdm.weights import load_converted, weights_dir

log = logging.getLogger("pvdm.c3d")

WEIGHTS_NPZ = "conv3d_deepnetA_ucf.npz"
MEAN_NPZ = "mean2.npz"
WEIGHTS_URL = f"https://github.com/rezoo/tgan2/releases/download/v1.0/{WEIGHTS_NPZ}"
MEAN_URL = f"https://github.com/rezoo/tgan2/releases/download/v1.0/{MEAN_NPZ}"
C3D_FILENAME = "c3d_ucf101_tgan2.safetensors"
# sha256 of the release assets; None: no published hash found (GitHub release page, README, issues).
PUBLISHED_SHA256: dict[str, str | None] = {WEIGHTS_NPZ: None, MEAN_NPZ: None}
CONVERSION_FORMAT = 1

NUM_CLASSES = 101
FRAMES = 16
SIZE = 112
MEAN_CROP = slice(8, 8 + SIZE)  # tgan2 crops the mean clip at [8:120] in height and width
MAPPINGS = ("tgan2", "unit")

# (name, in channels, out channels) of the 3x3x3 convs, in order.
CONVS = [
    ("conv1a", 3, 64),
    ("conv2a", 64, 128),
    ("conv3a", 128, 256),
    ("conv3b", 256, 256),
    ("conv4a", 256, 512),
    ("conv4b", 512, 512),
    ("conv5a", 512, 512),
    ("conv5b", 512, 512),
]
FCS = [("fc6", 512 * 4 * 4, 4096), ("fc7", 4096, 4096), ("fc8", 4096, NUM_CLASSES)]


def npz_shapes() -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the Chainer archive ``conv3d_deepnetA_ucf.npz`` (what save_npz writes)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, cin, cout in CONVS:
        shapes[f"{name}/W"] = (cout, cin, 3, 3, 3)
        shapes[f"{name}/b"] = (cout,)
    for name, cin, cout in FCS:
        shapes[f"{name}/W"] = (cout, cin)
        shapes[f"{name}/b"] = (cout,)
    return shapes


class C3D(nn.Module):
    """``[B, 3, 16, 112, 112]`` BGR pixels minus the mean clip -> ``[B, 101]`` UCF-101 logits (fc8)."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        for name, cin, cout in CONVS:
            self.add_module(name, nn.Conv3d(cin, cout, 3, padding=1))
        for name, cin, cout in FCS[:-1]:
            self.add_module(name, nn.Linear(cin, cout))
        self.fc8 = nn.Linear(4096, num_classes)
        # BGR mean clip, already cropped to 112x112; subtracted in preprocess().
        self.register_buffer("mean", torch.zeros(3, FRAMES, SIZE, SIZE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or tuple(x.shape[1:]) != (3, FRAMES, SIZE, SIZE):
            raise ValueError(f"C3D expects [B, 3, {FRAMES}, {SIZE}, {SIZE}], got {tuple(x.shape)}")
        x = F.relu(self.conv1a(x))  # b 64 16 112 112
        x = F.max_pool3d(x, (1, 2, 2))  # b 64 16 56 56
        x = F.max_pool3d(F.relu(self.conv2a(x)), 2)  # b 128 8 28 28
        x = F.relu(self.conv3b(F.relu(self.conv3a(x))))
        x = F.max_pool3d(x, 2)  # b 256 4 14 14
        x = F.relu(self.conv4b(F.relu(self.conv4a(x))))
        x = F.max_pool3d(x, 2)  # b 512 2 7 7
        x = F.relu(self.conv5b(F.relu(self.conv5a(x))))
        x = F.max_pool3d(x, 2, ceil_mode=True)  # b 512 1 4 4: Chainer's cover_all pools the 7th column too
        x = x.flatten(1)  # b 8192, (c t h w) order as Chainer's Linear reshapes
        x = F.relu(self.fc6(x))  # b 4096
        x = F.relu(self.fc7(x))  # b 4096
        return self.fc8(x)  # b 101


def preprocess(clips: torch.Tensor, mean: torch.Tensor, mapping: str = "tgan2") -> torch.Tensor:
    """uint8 ``[N, 16, H, W, C]`` (C = 1 or 3, RGB) -> float ``[N, 3, 16, 112, 112]`` BGR minus the mean clip."""
    if mapping not in MAPPINGS:
        raise ValueError(f"unknown uint8 mapping '{mapping}'; choose one of {MAPPINGS}")
    if clips.dtype != torch.uint8 or clips.ndim != 5 or clips.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 clips [N, T, H, W, 1 or 3], got {clips.dtype} {tuple(clips.shape)}")
    n, t, h, w, c = clips.shape
    if t != FRAMES:
        raise ValueError(f"C3D takes exactly {FRAMES} frames (its mean clip has {FRAMES}), got {t}")
    x = clips.reshape(n * t, h, w, c).permute(0, 3, 1, 2).float()  # nt c h w, values 0..255
    if c == 1:  # grey datasets are repeated to RGB, as StyleGAN-V does
        x = x.expand(-1, 3, -1, -1)
    x = x.flip(1)  # RGB -> BGR (tgan2's fixed 1x1x1 'pre' conv)
    if mapping == "unit":  # p/127.5 - 1 in [-1, 1], then tgan2's x*128 + 128
        x = (x / 127.5 - 1) * 128 + 128
    if (h, w) != (SIZE, SIZE):  # Chainer 6 resize_images: bilinear, corners aligned, no antialias
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=True, antialias=False)
    x = x.reshape(n, t, 3, SIZE, SIZE).permute(0, 2, 1, 3, 4)  # n 3 16 112 112
    return (x - mean.to(x)).contiguous()


# ---------------------------------------------------------------------------------------------------
# Weights: the two Chainer archives -> safetensors (+ sha256 sidecar) -> verified load


def missing_archives_message(missing: list[Path], where: Path | str | None) -> str:
    where_text = str(where) if where is not None else "the C3D archive directory given in the config"
    return (
        f"C3D weights for the UCF-101 Inception Score are missing: {', '.join(str(p) for p in missing)}. "
        f"Download both {WEIGHTS_NPZ} ({WEIGHTS_URL}) and {MEAN_NPZ} ({MEAN_URL}) and place them in "
        f"{where_text} (the config's C3D archive directory); they are not on PyPI or Debian, so this needs "
        f"a machine with GitHub access."
    )


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    # allow_pickle=False: the archives must be plain arrays; object arrays (pickles) are refused.
    with np.load(path, allow_pickle=False) as z:
        return {k: np.asarray(z[k]) for k in z.files}


def _mean_crop(mean: np.ndarray) -> torch.Tensor:
    """The (3, 16, 112, 112) BGR mean tgan2 subtracts: ``mean[:, :, 8:120, 8:120]``."""
    if mean.ndim != 4 or mean.shape[:2] != (3, FRAMES) or min(mean.shape[2:]) < MEAN_CROP.stop:
        raise ValueError(
            f"{MEAN_NPZ}: 'mean' has shape {mean.shape}, expected (3, {FRAMES}, H, W) with H, W >= "
            f"{MEAN_CROP.stop} (the release is believed to be (3, 16, 128, 171))"
        )
    return torch.from_numpy(np.ascontiguousarray(mean[:, :, MEAN_CROP, MEAN_CROP], dtype=np.float32))


def _state_dict_from_npz(weights: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    shapes = npz_shapes()
    missing = sorted(set(shapes) - set(weights))
    extra = sorted(set(weights) - set(shapes))
    if missing or extra:
        raise ValueError(
            f"{WEIGHTS_NPZ} does not have the tgan2 C3DVersion1UCF101 layout: missing {missing[:5]}, "
            f"unexpected {extra[:5]}"
        )
    out: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        if weights[key].shape != shape:
            raise ValueError(f"{WEIGHTS_NPZ}: {key} has shape {weights[key].shape}, expected {shape}")
        name, kind = key.split("/")
        out[f"{name}.{'weight' if kind == 'W' else 'bias'}"] = torch.from_numpy(
            np.ascontiguousarray(weights[key], dtype=np.float32)
        )
    return out


def c3d_weights_path(out_dir: str | Path | None = None) -> Path:
    return Path(out_dir or weights_dir()) / C3D_FILENAME


def convert_c3d_weights(
    weights_npz: str | Path, mean_npz: str | Path, out_dir: str | Path | None = None
) -> Path:
    """Convert tgan2's ``conv3d_deepnetA_ucf.npz`` + ``mean2.npz`` to one safetensors file with a .sha256 sidecar.

    The file holds the PyTorch state dict of :class:`C3D` (the cropped BGR mean clip as ``mean``) and the
    sha256 of both archives in its metadata.
    """
    from safetensors.torch import save_file

    weights_npz, mean_npz = Path(weights_npz), Path(mean_npz)
    missing = [p for p in (weights_npz, mean_npz) if not p.is_file()]
    if missing:
        raise FileNotFoundError(missing_archives_message(missing, missing[0].parent))
    hashes = {WEIGHTS_NPZ: sha256_file(weights_npz), MEAN_NPZ: sha256_file(mean_npz)}
    for name, digest in hashes.items():
        pinned = PUBLISHED_SHA256.get(name)
        if pinned is not None and pinned != digest:
            raise ValueError(f"{name}: sha256 {digest} does not match the published {pinned}")
        log.info("%s sha256 %s", name, digest)
    mean_arrays = _load_npz(mean_npz)
    if "mean" not in mean_arrays:
        raise ValueError(f"{mean_npz}: no array 'mean' (found {sorted(mean_arrays)})")
    mean = _mean_crop(mean_arrays["mean"])  # checked before the 300 MB of weights are read
    state = _state_dict_from_npz(_load_npz(weights_npz))
    state["mean"] = mean
    path = c3d_weights_path(out_dir)
    # One metadata key only: several keys are written in hash order and would make the bytes unstable.
    source = json.dumps(
        {
            "weights": WEIGHTS_NPZ,
            "weights_sha256": hashes[WEIGHTS_NPZ],
            "mean": MEAN_NPZ,
            "mean_sha256": hashes[MEAN_NPZ],
            "mean_shape": list(mean_arrays["mean"].shape),
            "format": CONVERSION_FORMAT,
        },
        sort_keys=True,
    )
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata={"source": source})
    atomic_write_text(path.with_name(path.name + ".sha256"), f"{sha256_file(path)}  {path.name}\n")
    return path


def c3d_source_info(path: str | Path | None = None) -> dict:
    """The archive names and sha256s a converted file was made from (its safetensors metadata)."""
    from safetensors import safe_open

    with safe_open(str(path or c3d_weights_path()), "pt") as f:
        return json.loads((f.metadata() or {})["source"])


def c3d_weights_sha256(path: str | Path | None = None) -> str:
    """sha256 of the converted C3D file, from its sidecar; goes into protocol cards."""
    path = Path(path or c3d_weights_path())
    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.is_file():
        raise FileNotFoundError(f"{sidecar} is missing; delete {path} and convert again")
    return sidecar.read_text().split()[0]


def load_c3d(
    device: str | torch.device = "cpu",
    path: str | Path | None = None,
    archives_dir: str | Path | None = None,
) -> C3D:
    """The UCF-101 C3D in eval mode, frozen, with its sha256 checked against the sidecar.

    ``path`` is the converted file (default: ``weights_dir()/c3d_ucf101_tgan2.safetensors``). When it does
    not exist it is converted from ``archives_dir``/{conv3d_deepnetA_ucf.npz, mean2.npz} if given; otherwise
    a FileNotFoundError says which files to download and where to put them.
    """

    path = Path(path) if path is not None else c3d_weights_path()
    if not path.is_file():
        if archives_dir is None:
            raise FileNotFoundError(
                f"{path} does not exist. "
                + missing_archives_message([Path(WEIGHTS_NPZ), Path(MEAN_NPZ)], None)
                + " Then call load_c3d(archives_dir=...) or convert_c3d_weights(...)."
            )
        archives_dir = Path(archives_dir)
        convert_c3d_weights(archives_dir / WEIGHTS_NPZ, archives_dir / MEAN_NPZ, path.parent)
        path = c3d_weights_path(path.parent)
    model = load_converted(C3D(), path, c3d_weights_sha256(path))
    model.eval().requires_grad_(False)
    return model.to(device)
