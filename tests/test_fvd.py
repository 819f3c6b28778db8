"""Fréchet distance, FVD statistics, clip selection, caching and the `pvdm fvd` command."""

import argparse
import json

import numpy as np
import pytest
import torch

from pvdm.eval import fvd
from pvdm.eval.commands import register
from pvdm.eval.intervals import fixed_n
from pvdm.eval.records import FVDRecord

pytestmark = pytest.mark.usefixtures("isolated_weights_dir")


def gaussian_features(n: int, d: int, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(123).normal(size=(d, d)) / np.sqrt(d)  # shared correlated covariance
    return rng.normal(size=(n, d)) @ mix + 1.0 + shift


def random_orthogonal(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


@pytest.mark.parametrize("method", ["sqrtm", "eig"])
def test_frechet_distance_closed_form_for_commuting_covariances(method):
    rng = np.random.default_rng(0)
    d = 50
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.1, 4.0, size=d), rng.uniform(0.1, 4.0, size=d)
    # For covariances sharing eigenvectors: ||mu1-mu2||^2 + sum (sqrt(v1) - sqrt(v2))^2.
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert fvd.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2), method=method) == pytest.approx(expected, rel=1e-9)
    q = random_orthogonal(d, 1)
    s1, s2 = q @ np.diag(v1) @ q.T, q @ np.diag(v2) @ q.T
    assert fvd.frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(expected, rel=1e-7)


def test_frechet_distance_methods_agree_on_non_commuting_covariances():
    a = gaussian_features(600, 40, seed=1)
    b = gaussian_features(600, 40, shift=0.3, seed=2) * np.linspace(0.5, 2.0, 40)
    ma, sa = fvd.feature_stats(a)
    mb, sb = fvd.feature_stats(b)
    both = fvd.frechet_distance_both(ma, sa, mb, sb)
    assert both["sqrtm"] == pytest.approx(both["eig"], rel=1e-8)
    # 1-d sanity: (m1 - m2)^2 + (s1 - s2)^2.
    assert fvd.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) == (
        pytest.approx(4.0 + 1.0))


def test_fvd_of_a_set_with_itself_is_zero():
    x = gaussian_features(300, 64)
    _, sigma = fvd.feature_stats(x)
    assert abs(fvd.fvd_from_features(x, x)) <= 1e-8 * np.trace(sigma)


def test_fvd_is_symmetric_and_row_order_invariant():
    a, b = gaussian_features(400, 32, seed=1), gaussian_features(300, 32, shift=0.2, seed=2)
    value = fvd.fvd_from_features(a, b)
    assert value > 0
    assert fvd.fvd_from_features(b, a) == pytest.approx(value, rel=1e-8)
    perm = np.random.default_rng(0).permutation(len(a))
    assert fvd.fvd_from_features(a[perm], b[::-1]) == pytest.approx(value, rel=1e-8)


def test_larger_shift_gives_larger_fvd():
    real = gaussian_features(500, 32, seed=1)
    values = [fvd.fvd_from_features(real, gaussian_features(500, 32, shift=s, seed=2)) for s in (0, 0.25, 0.5, 1, 2)]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))


def test_unbiased_covariance_is_rescaled_biased():
    x = gaussian_features(10, 4)
    _, biased = fvd.feature_stats(x)
    _, unbiased = fvd.feature_stats(x, unbiased=True)
    np.testing.assert_allclose(unbiased, biased * 10 / 9)
    np.testing.assert_allclose(unbiased, np.cov(x.T))


def test_clear_errors_for_bad_features():
    good = gaussian_features(10, 4)
    with pytest.raises(ValueError, match="at least 2 videos"):
        fvd.fvd_from_features(good[:1], good)
    bad = good.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN/inf"):
        fvd.fvd_from_features(good, bad)
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match=r"rows \[3\]"):
        fvd.fvd_from_features(bad, good)
    with pytest.raises(ValueError, match="dimensions differ"):
        fvd.fvd_from_features(good, good[:, :3])


def test_bootstrap_interval_contains_point_estimate_and_is_seeded():
    real, fake = gaussian_features(400, 8, seed=1), gaussian_features(400, 8, shift=0.5, seed=2)
    value = fvd.fvd_from_features(real, fake)
    lo, hi = fixed_n(real, fake, rounds=200, seed=3)  # the interval evaluate_fvd reports
    assert lo < value < hi
    assert hi - lo < value  # informative, not degenerate
    assert fixed_n(real, fake, rounds=200, seed=3) == (lo, hi)
    assert fixed_n(real, fake, rounds=200, seed=4) != (lo, hi)


def test_real_floor_uses_disjoint_subsets(monkeypatch):
    real = gaussian_features(400, 8, seed=1)
    compared = []
    distance = fvd.fvd_from_features
    monkeypatch.setattr(fvd, "fvd_from_features", lambda a, b, unbiased=False: compared.append((a, b)) or distance(a, b))
    floor = fvd.real_floor(real, 200, seed=0)
    (a, b), = compared
    rows_a, rows_b = {r.tobytes() for r in a}, {r.tobytes() for r in b}
    assert len(rows_a) == len(rows_b) == 200 and not rows_a & rows_b  # two disjoint halves of the real set
    assert rows_a | rows_b == {r.tobytes() for r in real}
    assert 0 < floor < fvd.fvd_from_features(real, gaussian_features(400, 8, shift=0.5, seed=2))
    assert fvd.real_floor(real, 200, seed=0) == floor
    with pytest.raises(ValueError, match="2\\*n"):
        fvd.real_floor(real, 201, seed=0)


def test_select_clips():
    lengths = [20, 10, 16, 40, 30, 17]
    sel = fvd.select_clips(lengths, 3, 16, "first_n_sorted", seed=0)
    assert [i for i, _ in sel] == [0, 2, 3]  # video 1 is too short and skipped
    assert all(0 <= s <= lengths[i] - 16 for i, s in sel)
    assert sel == fvd.select_clips(lengths, 3, 16, "first_n_sorted", seed=0)
    offsets = {tuple(fvd.select_clips([200] * 4, 4, 16, "first_n_sorted", seed=k)) for k in range(5)}
    assert len(offsets) > 1  # the seed drives the offsets
    assert fvd.select_clips(lengths, 3, 16, "first_n_from_start") == [(0, 0), (2, 0), (3, 0)]
    rnd = fvd.select_clips(lengths, 4, 16, "random_seeded", seed=1)
    assert len({i for i, _ in rnd}) == 4 and 1 not in {i for i, _ in rnd}
    assert len(fvd.select_clips(lengths, 100, 16)) == 5  # only what is available
    with pytest.raises(ValueError, match="at least 50 frames"):
        fvd.select_clips(lengths, 3, 50)
    with pytest.raises(ValueError, match="selector"):
        fvd.select_clips(lengths, 3, 16, "every_other")


def test_quantize_uint8_rounds_half_up():
    x = torch.tensor([-1.0, -1.5, 1.0, 2.0, 0.0, 1 / 255])
    assert fvd.quantize_uint8(x).tolist() == [0, 0, 255, 255, 128, 128]


def test_resize_modes():
    rng = np.random.default_rng(0)
    frame = torch.from_numpy(rng.integers(0, 256, size=(1, 1, 112, 112, 3), dtype=np.uint8))
    mapped = frame[0, 0].permute(2, 0, 1).float() / 255 * 2 - 1  # c h w
    legacy = fvd.preprocess(frame, "tf_legacy")[0, :, 0]  # c 224 224
    assert legacy.shape == (3, 224, 224)
    # TF1 legacy: dst pixel 2k samples src pixel k exactly; 2k+1 is the midpoint (last one clamps).
    torch.testing.assert_close(legacy[:, ::2, ::2], mapped)
    torch.testing.assert_close(legacy[:, 1, 1], (mapped[:, 0, 0] + mapped[:, 1, 0] + mapped[:, 0, 1]
                                                 + mapped[:, 1, 1]) / 4)
    # Half-pixel bilinear (PyTorch align_corners=False): src = max((dst + 0.5) * in/out - 0.5, 0).
    half = fvd.preprocess(frame, "bilinear")[0, :, 0]
    src = np.maximum((np.arange(224) + 0.5) * 112 / 224 - 0.5, 0)
    lo = np.floor(src).astype(int)
    hi, f = np.minimum(lo + 1, 111), torch.tensor(src - lo, dtype=torch.float32)
    rows = mapped[:, lo] * (1 - f)[:, None] + mapped[:, hi] * f[:, None]
    torch.testing.assert_close(half, rows[:, :, lo] * (1 - f) + rows[:, :, hi] * f)
    assert not torch.allclose(half, legacy)
    # At 224 both modes are the identity.
    big = torch.from_numpy(rng.integers(0, 256, size=(1, 2, 224, 224, 3), dtype=np.uint8))
    torch.testing.assert_close(fvd.preprocess(big, "bilinear"), fvd.preprocess(big, "none"))
    torch.testing.assert_close(fvd.preprocess(big, "tf_legacy"), fvd.preprocess(big, "none"))
    with pytest.raises(ValueError, match="uint8"):
        fvd.preprocess(big.float(), "bilinear")
    with pytest.raises(ValueError, match="224x224"):
        fvd.preprocess(frame, "none")


class MeanColourModel(torch.nn.Module):
    """A cheap deterministic stand-in for I3D: per-video channel means tiled to 400-d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3, 4)).repeat(1, 134)[:, :400]


def test_compute_features_batches_and_checks_frame_counts():
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, size=(5, 4, 16, 16, 3), dtype=np.uint8)
    model = MeanColourModel()
    whole = fvd.compute_features(clips, model=model, batch_size=2, device="cpu")
    parts = fvd.compute_features(iter([clips[:3], clips[3:]]), model=model, device="cpu")
    assert whole.shape == (5, 400) and whole.dtype == np.float64
    np.testing.assert_allclose(whole, parts, rtol=1e-6)
    np.testing.assert_allclose(whole[:, 0], clips[..., 0].mean(axis=(1, 2, 3)) / 255 * 2 - 1, atol=1e-2)
    with pytest.raises(ValueError, match="mismatched frame counts"):
        fvd.compute_features(iter([clips, clips[:, :3]]), model=model, device="cpu")
    with pytest.raises(ValueError, match="uint8"):
        fvd.compute_features(clips.astype(np.float32), model=model, device="cpu")
    with pytest.raises(ValueError, match="1 videos gave NaN"):
        fvd.compute_features(clips, model=lambda x: model(x).index_fill(0, torch.tensor([1]), float("nan")),
                             device="cpu")


def test_cached_features_keyed_by_protocol(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return gaussian_features(10, 4, seed=len(calls))

    protocol = {"dataset": "x", "frames": 16, "seed": 0}
    first = fvd.cached_features(tmp_path, protocol, compute)
    again = fvd.cached_features(tmp_path, dict(reversed(protocol.items())), compute)  # key order is irrelevant
    np.testing.assert_array_equal(first, again)
    assert len(calls) == 1
    other = fvd.cached_features(tmp_path, {**protocol, "seed": 1}, compute)
    assert len(calls) == 2 and not np.array_equal(first, other)
    assert len(list(tmp_path.glob("i3d_features_*.npz"))) == 2


def test_protocol_card_records_weights_and_code_version():
    from pvdm.eval.i3d import i3d_weights_sha256

    card = fvd.protocol_card(dataset="ucf101", split="train", num_real=2048, num_fake=2048, frames=16,
                             resolution=(128, 128), unbiased=False, sampler="ddim100", ema=True)
    assert card["metric"] == "fvd2048_16f"
    assert card["i3d_weights_sha256"] == i3d_weights_sha256() and len(card["i3d_weights_sha256"]) == 64
    assert card["i3d_source_sha256"] == "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
    assert card["covariance"].startswith("biased")
    assert card["code_version"]["pvdm"] and "git_commit" in card["code_version"]
    assert card["resize"]["mode"] == "bilinear" and card["real_clip_selector"] == "first_n_sorted"
    json.dumps(card)  # must be JSON-serialisable


def test_fvd_command_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, size=(4, 20, 32, 32, 3), dtype=np.uint8)
    fake = np.clip(real[:, :16].astype(np.int16) + 60, 0, 255).astype(np.uint8)
    np.save(tmp_path / "real.npy", real)
    np.save(tmp_path / "fake.npy", fake)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "m.json"
    args = parser.parse_args(["fvd", "--real", str(tmp_path / "real.npy"), "--fake", str(tmp_path / "fake.npy"),
                              "--num-videos", "3", "--frames", "16", "--out", str(out), "--bootstrap", "5",
                              "--cache-dir", str(tmp_path / "cache"), "--dataset", "noise", "--seed", "1"])
    args.func(args)
    saved = json.loads(out.read_text())
    assert saved["metric"] == "fvd3_16f" and FVDRecord.read(out).value == saved["value"]
    assert saved["value"] > 0 and saved["value"] == pytest.approx(saved["value_eig"], rel=1e-3)
    # 3 videos per set: no two halves of 2 for the floor, too few for the half-sample interval (needs 4)
    assert saved["interval95"] is None and saved["interval"] is None and saved["real_floor"] is None
    card = saved["protocol"]
    assert card["num_real"] == 3 and card["num_fake"] == 3 and card["selector_seed"] == 1
    assert card["real_source"]["sha256"] and card["dataset"] == "noise"
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    with pytest.raises(ValueError, match="uint8"):
        np.save(tmp_path / "bad.npy", real.astype(np.float32))
        args.real = tmp_path / "bad.npy"
        args.func(args)


def test_floor_at_the_same_n_embeds_2n_real_clips(monkeypatch):
    """eval.floor_videos = N: the FVD still compares the first N real clips with the N fake ones, the floor
    compares two disjoint sets of N from 2N real clips, and too few real clips is an error naming them."""
    import pvdm.eval.i3d as i3d

    embedded = []

    def cheap_i3d(device):  # per-frame means: a deterministic stand-in for the 400-d I3D logits
        def model(x):
            embedded.append(len(x))
            return x.mean(dim=(3, 4)).flatten(1)
        return model

    monkeypatch.setattr(i3d, "load_i3d", cheap_i3d)
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, size=(10, 16, 8, 8, 3), dtype=np.uint8)
    fake = rng.integers(0, 200, size=(4, 16, 8, 8, 3), dtype=np.uint8)
    kw = dict(num_videos=4, frames=16, bootstrap_rounds=0, device="cpu")
    monkeypatch.setattr(fvd, "preprocess", lambda x, mode: x.float())
    half = fvd.evaluate_fvd(real, fake, **kw)
    same_n = fvd.evaluate_fvd(real, fake, floor_videos=4, **kw)
    assert same_n.value == half.value  # the model's FVD is unchanged
    assert half.real_floor.n == 2 and same_n.real_floor.n == 4
    assert same_n.protocol["num_real"] == 4
    assert same_n.real_floor.value != half.real_floor.value
    assert sum(embedded) == (4 + 4) + (8 + 4)  # 2N real clips embedded for the same-N floor
    with pytest.raises(ValueError, match="needs 12 real clips of 16 frames; the real set has 10"):
        fvd.evaluate_fvd(real, fake, floor_videos=6, **kw)
