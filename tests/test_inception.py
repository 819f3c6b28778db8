"""Video Inception Score maths (StyleGAN-V isv2048_ucf) and the tgan2 UCF-101 C3D port (random weights)."""

import json

import numpy as np
import pytest
import torch
from conftest import make_c3d_archives

from pvdm.eval import c3d, inception


def stylegan_v_is(probs: np.ndarray, splits: int) -> tuple[float, float]:
    """StyleGAN-V's loop written out literally (float32, RandomState(42) shuffle, no epsilon)."""
    p = np.asarray(probs, dtype=np.float32).copy()
    np.random.RandomState(42).shuffle(p)
    n = len(p)
    scores = []
    for i in range(splits):
        part = p[i * n // splits : (i + 1) * n // splits]
        kl = part * (np.log(part) - np.log(np.mean(part, axis=0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, axis=1))))
    return float(np.mean(scores)), float(np.std(scores))


def one_hot_spread(n: int, k: int, classes: int = 101) -> np.ndarray:
    """n one-hot rows spread evenly over classes 0..k-1 (n divisible by k)."""
    p = np.zeros((n, classes), np.float32)
    p[np.arange(n), np.arange(n) % k] = 1
    return p


def test_uniform_rows_give_one():
    mean, std = inception.inception_score(np.full((200, 101), 1 / 101, np.float32), splits=10)
    assert mean == pytest.approx(1.0, abs=1e-6)
    assert std == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("k", [1, 2, 5, 101])
def test_one_hot_rows_over_k_classes_give_k(k):
    # Every split holds each of the k classes equally often: KL = log k per row, IS = k in every split.
    splits = 4
    probs = one_hot_spread(splits * k * 3, k)
    mean, std = inception.inception_score(probs, splits=splits, shuffle_seed=None)
    assert mean == pytest.approx(k, rel=1e-5)
    assert std == pytest.approx(0.0, abs=1e-4 * k)


def test_shuffle_is_randomstate_42():
    # Build rows so that *after* RandomState(42).shuffle, split j is one-hot spread over j+1 classes:
    # scores 1, 2, 3, 4 -> mean 2.5, population std sqrt(1.25). Any other shuffle breaks the pattern.
    splits, size = 4, 12
    target = np.concatenate([one_hot_spread(size, j + 1) for j in range(splits)])
    perm = np.random.RandomState(42).permutation(len(target))  # same draws as shuffle() on rows
    probs = np.empty_like(target)
    probs[perm] = target  # shuffle(probs) puts probs[perm[i]] at position i
    shuffled = probs.copy()
    np.random.RandomState(42).shuffle(shuffled)
    np.testing.assert_array_equal(shuffled, target)
    mean, std = inception.inception_score(probs, splits=splits)
    assert mean == pytest.approx(2.5, rel=1e-5)
    assert std == pytest.approx(np.sqrt(1.25), rel=1e-5)
    assert inception.inception_score(probs, splits=splits, shuffle_seed=0)[0] != pytest.approx(2.5, rel=1e-3)
    # Deterministic, and the caller's array is left untouched.
    before = probs.copy()
    assert inception.inception_score(probs, splits=splits) == inception.inception_score(probs, splits=splits)
    np.testing.assert_array_equal(probs, before)


def test_matches_stylegan_v_loop_bit_for_bit():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(101, 0.3), size=2048).astype(np.float32)
    assert inception.inception_score(probs, splits=10) == stylegan_v_is(probs, splits=10)


def test_zero_probabilities_count_as_zero_kl():
    probs = one_hot_spread(40, 4)
    with np.errstate(all="ignore"):
        assert np.isnan(stylegan_v_is(probs, splits=2)[0])  # the literal formula gives NaN
    assert np.isfinite(inception.inception_score(probs, splits=2)[0])


def test_bad_probabilities_are_rejected():
    with pytest.raises(ValueError, match="sum to 1"):
        inception.inception_score(np.full((20, 5), 0.5), splits=2)
    with pytest.raises(ValueError, match="N >= splits"):
        inception.inception_score(np.full((5, 5), 0.2), splits=10)


# ---------------------------------------------------------------------------------------------------
# C3D: archives of random weights in the real key layout


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    return make_c3d_archives(tmp_path_factory.mktemp("c3d_archives"))


@pytest.fixture(scope="module")
def converted(archives, tmp_path_factory):
    out = tmp_path_factory.mktemp("c3d_weights")
    return c3d.convert_c3d_weights(archives / c3d.WEIGHTS_NPZ, archives / c3d.MEAN_NPZ, out)


def test_conversion_round_trip_is_identical_and_stable(archives, converted, tmp_path):
    from safetensors.torch import load_file

    state = load_file(str(converted))
    with np.load(archives / c3d.WEIGHTS_NPZ) as z:
        for key in c3d.npz_shapes():
            name, kind = key.split("/")
            torch.testing.assert_close(
                state[f"{name}.{'weight' if kind == 'W' else 'bias'}"],
                torch.from_numpy(z[key]),
                rtol=0,
                atol=0,
            )
    with np.load(archives / c3d.MEAN_NPZ) as z:
        expected_mean = torch.from_numpy(z["mean"][:, :, 8:120, 8:120].astype(np.float32))
    torch.testing.assert_close(state["mean"], expected_mean, rtol=0, atol=0)
    again = c3d.convert_c3d_weights(archives / c3d.WEIGHTS_NPZ, archives / c3d.MEAN_NPZ, tmp_path)
    assert again.read_bytes() == converted.read_bytes()
    assert c3d.c3d_weights_sha256(again) == c3d.c3d_weights_sha256(converted)
    info = c3d.c3d_source_info(converted)
    assert info["mean_shape"] == [3, 16, 128, 171] and len(info["weights_sha256"]) == 64


def test_forward_gives_probabilities(converted):
    model = c3d.load_c3d("cpu", converted)
    assert sum(p.numel() for p in model.parameters()) == 78_409_573  # the Caffe C3D + 101-way fc8
    videos = np.random.default_rng(1).integers(0, 256, size=(2, 16, 64, 80, 3), dtype=np.uint8)
    probs = inception.c3d_probabilities(videos, model, "cpu", batch_size=2)
    assert probs.shape == (2, 101) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert (probs >= 0).all()


def test_evaluate_is_returns_a_record(converted, monkeypatch):
    model = c3d.load_c3d("cpu", converted)
    # The network is tested above; here only the plumbing matters, so a cheap stand-in gives the logits.
    monkeypatch.setattr(model, "forward", lambda x: x.mean(dim=(2, 3, 4))[:, :1].repeat(1, 101))
    videos = np.random.default_rng(2).integers(0, 256, size=(4, 20, 32, 32, 3), dtype=np.uint8)
    out = inception.evaluate_is(videos, model, num_videos=4, splits=2, weights_path=converted, dataset="toy")
    assert out.value == pytest.approx(1.0, abs=1e-5)  # identical logits across classes -> uniform rows
    assert (out.num_videos, out.frames, out.splits) == (4, 16, 2)
    card = out.protocol
    assert card["metric"] == "isv4_ucf" and card["protocol"] == "isv2048_ucf (StyleGAN-V) / TGANv2 C3D"
    assert card["c3d_weights_sha256"] == c3d.c3d_weights_sha256(converted)
    assert card["resolution"] == [32, 32]
    json.dumps(out.to_json())


def test_preprocess_is_bgr_pixels_minus_mean():
    mean = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 16, 112, 112)
    clip = torch.zeros(1, 16, 112, 112, 3, dtype=torch.uint8)
    clip[..., 0], clip[..., 1], clip[..., 2] = 10, 20, 30  # R G B
    x = c3d.preprocess(clip, mean)
    assert x.shape == (1, 3, 16, 112, 112)
    assert x[0, :, 0, 0, 0].tolist() == [30.0, 19.0, 8.0]  # B-0, G-1, R-2
    unit = c3d.preprocess(clip, mean, mapping="unit")
    torch.testing.assert_close(
        unit[0, :, 0, 0, 0], torch.tensor([30 * 256 / 255, 20 * 256 / 255 - 1, 10 * 256 / 255 - 2])
    )
    # Resize keeps the corners (Chainer's align_corners=True) and a constant image constant.
    ramp = torch.zeros(1, 16, 2, 2, 3, dtype=torch.uint8)
    ramp[:, :, :, 1] = 200
    r = c3d.preprocess(ramp, torch.zeros(3, 16, 112, 112))
    assert r[0, 0, 0, 0, 0] == 0 and r[0, 0, 0, 0, -1] == 200
    assert r[0, 0, 0, 0, 1].item() == pytest.approx(200 / 111)
    with pytest.raises(ValueError, match="16 frames"):
        c3d.preprocess(torch.zeros(1, 8, 112, 112, 3, dtype=torch.uint8), mean)


def test_network_shapes_match_the_chainer_model():
    model = c3d.C3D()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, shape in c3d.npz_shapes().items():
        name, kind = key.split("/")
        assert shapes[f"{name}.{'weight' if kind == 'W' else 'bias'}"] == shape
    assert shapes["mean"] == (3, 16, 112, 112)
    # pool5 in ceil mode: 2x7x7 -> 1x4x4, the 8192 inputs of fc6; Chainer's cover_all pads the end with -inf.
    x = torch.randn(1, 4, 2, 7, 7)
    pooled = torch.nn.functional.max_pool3d(x, 2, ceil_mode=True)
    assert pooled.shape == (1, 4, 1, 4, 4)
    padded = torch.nn.functional.pad(x, (0, 1, 0, 1), value=float("-inf"))  # 2x8x8
    torch.testing.assert_close(pooled, padded.reshape(1, 4, 1, 2, 4, 2, 4, 2).amax(dim=(3, 5, 7)))


def chainer6_resize(img: np.ndarray, out: int) -> np.ndarray:
    """Chainer 6 F.resize_images for one [H, W] image: v = linspace(0, H-1, out), bilinear between floor/ceil."""

    def axis(n: int):
        v = np.linspace(0, n - 1, out)
        v0 = np.floor(v).astype(int)
        return v0, np.minimum(v0 + 1, n - 1), v - v0

    r0, r1, rw = axis(img.shape[0])
    c0, c1, cw = axis(img.shape[1])
    top = img[r0][:, c0] * (1 - cw) + img[r0][:, c1] * cw
    bottom = img[r1][:, c0] * (1 - cw) + img[r1][:, c1] * cw
    return top * (1 - rw)[:, None] + bottom * rw[:, None]


@pytest.mark.parametrize("size", [(64, 80), (128, 171), (240, 320)])
def test_resize_matches_chainer_formula(size):
    clip = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 16, *size, 3), dtype=np.uint8))
    x = c3d.preprocess(clip, torch.zeros(3, 16, 112, 112))  # 1 3 16 112 112, BGR
    expected = chainer6_resize(clip[0, 5, :, :, 0].double().numpy(), 112)  # R channel of frame 5
    # Exact in float64; float32 coordinates and weights (Chainer casts weights to float32 too) leave < 1e-2 of 255.
    np.testing.assert_allclose(x[0, 2, 5].double().numpy(), expected, atol=1e-2)


def test_missing_archives_name_the_files_and_urls(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        c3d.convert_c3d_weights(tmp_path / c3d.WEIGHTS_NPZ, tmp_path / c3d.MEAN_NPZ, tmp_path / "out")
    msg = str(e.value)
    for text in (c3d.WEIGHTS_NPZ, c3d.MEAN_NPZ, c3d.WEIGHTS_URL, c3d.MEAN_URL, str(tmp_path)):
        assert text in msg
    with pytest.raises(FileNotFoundError) as e:
        c3d.load_c3d("cpu", tmp_path / "nothing.safetensors")
    for text in (c3d.WEIGHTS_NPZ, c3d.MEAN_NPZ, c3d.WEIGHTS_URL, c3d.MEAN_URL):
        assert text in str(e.value)


def test_wrong_layout_and_pickles_are_refused(archives, tmp_path):
    # Small stand-in archives: the layout check runs before any shape is used.
    np.savez(tmp_path / c3d.WEIGHTS_NPZ, **{"predictor/conv1a/W": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="missing.*unexpected"):
        c3d.convert_c3d_weights(tmp_path / c3d.WEIGHTS_NPZ, archives / c3d.MEAN_NPZ, tmp_path / "out")
    np.savez(tmp_path / c3d.MEAN_NPZ, mean=np.array([{"a": 1}], dtype=object))  # a pickled object array
    with pytest.raises(ValueError, match="allow_pickle"):
        c3d.convert_c3d_weights(tmp_path / c3d.WEIGHTS_NPZ, tmp_path / c3d.MEAN_NPZ, tmp_path / "out")
    np.savez(tmp_path / c3d.MEAN_NPZ, mean=np.zeros((3, 16, 112, 112)))  # too small for the [8:120] crop
    with pytest.raises(ValueError, match="expected \\(3, 16, H, W\\)"):
        c3d.convert_c3d_weights(tmp_path / c3d.WEIGHTS_NPZ, tmp_path / c3d.MEAN_NPZ, tmp_path / "out")


def test_converted_file_tampering_is_detected(converted, tmp_path):
    import shutil

    copy = tmp_path / c3d.C3D_FILENAME
    shutil.copy(converted, copy)
    shutil.copy(converted.with_name(converted.name + ".sha256"), tmp_path / (c3d.C3D_FILENAME + ".sha256"))
    with open(copy, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x00\x00\x01")
    with pytest.raises(ValueError, match="does not match its sidecar"):
        c3d.load_c3d("cpu", copy)
