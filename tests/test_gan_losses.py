"""PatchGAN discriminators (structure of the original) and the autoencoder's GAN / composite losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pvdm.losses.gan import (
    AutoencoderLoss,
    adaptive_gan_weight,
    feature_matching_loss,
    hinge_d_loss,
    hinge_g_loss,
    select_frames,
)
from pvdm.models.discriminator import NLayerDiscriminator, NLayerDiscriminator3D

# The original's discriminators (ndf 64, 3 layers), counted by instantiating sihyun-yu/PVDM@793172f's
# NLayerDiscriminator / NLayerDiscriminator3D (docs/original-pvdm.md#discriminators): per-block parameter
# counts and state-dict keys in order.
PARAM_COUNTS = {
    2: {"model0": 3136, "model1": 131456, "model2": 525056, "model3": 2098688, "model4": 8193},
    3: {"model0": 12352, "model1": 524672, "model2": 2097920, "model3": 8390144, "model4": 32769},
}
TOTALS = {2: 2_766_529, 3: 11_057_857}
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
KEYS = (
    [("model0.0.weight", (64, 3)), ("model0.0.bias", (64,))]
    + [
        item
        for n, c_in, c in ((1, 64, 128), (2, 128, 256), (3, 256, 512))
        for item in [(f"model{n}.0.weight", (c, c_in)), (f"model{n}.0.bias", (c,))]
        + [(f"model{n}.1.{k}", () if k == "num_batches_tracked" else (c,)) for k in BN]
    ]
    + [("model4.0.weight", (1, 512)), ("model4.0.bias", (1,))]
)
# Block outputs of the original for 256² frames and 16×256² clips (docs/original-pvdm.md#discriminators).
SPATIAL_256 = [129, 65, 33, 34, 35]
TIME_16 = [9, 5, 3, 4, 5]


def expected_sizes(size: int) -> list[int]:
    # k4 p2 convs: stride 2 -> size // 2 + 1 (blocks 0..2), stride 1 -> size + 1 (blocks 3, 4).
    out = []
    for stride in (2, 2, 2, 1, 1):
        size = size // 2 + 1 if stride == 2 else size + 1
        out.append(size)
    return out


@pytest.mark.parametrize("dims", [2, 3])
def test_original_structure(dims):
    torch.manual_seed(0)
    d = NLayerDiscriminator() if dims == 2 else NLayerDiscriminator3D()
    counts = {f"model{n}": sum(p.numel() for p in getattr(d, f"model{n}").parameters()) for n in range(5)}
    assert counts == PARAM_COUNTS[dims]
    assert sum(p.numel() for p in d.parameters()) == TOTALS[dims]
    sd = d.state_dict()
    kernel = (4,) * dims
    expected = [(k, s + kernel if k.endswith("0.weight") else s) for k, s in KEYS]
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == expected

    # The original's init: conv weights N(0, 0.02), norm weights N(1, 0.02), norm biases 0.
    w = d.model3[0].weight
    assert abs(w.std().item() - 0.02) < 1e-3 and abs(w.mean().item()) < 1e-3
    bn = d.model3[1]
    assert abs(bn.weight.mean().item() - 1.0) < 5e-3 and 0.01 < bn.weight.std().item() < 0.03
    assert torch.all(bn.bias == 0)


@pytest.mark.parametrize("size", [64, 128])
def test_output_shapes(size):
    torch.manual_seed(0)
    frames = NLayerDiscriminator()(torch.randn(2, 3, size, size))
    clips = NLayerDiscriminator3D()(torch.randn(1, 3, 16, size, size))
    channels = [64, 128, 256, 512, 1]
    sizes = expected_sizes(size)
    assert [tuple(f.shape) for f in frames] == [(2, c, s, s) for c, s in zip(channels, sizes, strict=True)]
    assert [tuple(f.shape) for f in clips] == [
        (1, c, t, s, s) for c, t, s in zip(channels, TIME_16, sizes, strict=True)
    ]


def test_output_shapes_paper_resolution():
    # Shapes only: the meta device runs no arithmetic.
    with torch.device("meta"):
        frames = NLayerDiscriminator()(torch.empty(1, 3, 256, 256))
        clips = NLayerDiscriminator3D()(torch.empty(1, 3, 16, 256, 256))
    assert [f.shape[-1] for f in frames] == SPATIAL_256 == expected_sizes(256)
    assert [tuple(f.shape[2:]) for f in clips] == [
        (t, s, s) for t, s in zip(TIME_16, SPATIAL_256, strict=True)
    ]


def test_cross_rank_batchnorm_same_keys_and_numbers_on_one_process():
    from pvdm.train.distributed import CrossRankBatchNorm, _convert

    torch.manual_seed(0)
    plain = NLayerDiscriminator3D(ndf=8)
    converted = _convert(NLayerDiscriminator3D(ndf=8))
    assert isinstance(converted.model1[1], CrossRankBatchNorm) and isinstance(plain.model1[1], nn.BatchNorm3d)
    converted.load_state_dict(plain.state_dict())  # strict: identical keys
    x = torch.randn(2, 3, 8, 32, 32)
    torch.testing.assert_close(converted(x)[-1], plain(x)[-1])  # no process group: plain BatchNorm
    with pytest.raises(ValueError, match=r"\[B, C, T, H, W\]"):
        plain(torch.randn(2, 3, 32, 32))


def test_hinge_and_feature_matching_values():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.5])
    # relu(1 - real) = [0, 0.5, 2], relu(1 + fake) = [0, 1, 2.5] -> 0.5 * (2.5 / 3 + 3.5 / 3) = 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(1.0)
    assert hinge_d_loss(torch.full((4,), 1.0), torch.full((4,), -1.0)).item() == 0.0  # margins met
    assert hinge_g_loss(fake).item() == pytest.approx(0.5 / 3)

    f_real = [torch.zeros(2, 3), torch.ones(4), torch.full((5,), 100.0)]
    f_fake = [torch.full((2, 3), 0.5), torch.full((4,), -1.0), torch.zeros(5)]
    f_fake[0].requires_grad_(True)
    f_real[0].requires_grad_(True)
    fm = feature_matching_loss(f_fake, f_real)
    assert fm.item() == pytest.approx(0.5 + 2.0)  # the last entry (logits) is ignored
    fm.backward()
    assert f_fake[0].grad is not None and f_real[0].grad is None  # real features are detached


def test_discriminator_learns_toy_problem():
    """A few hinge steps on smooth 'real' clips vs noise 'fake' clips lower the D loss."""
    torch.manual_seed(0)
    loss_fn = AutoencoderLoss(lpips_weight=0.0, disc_ndf=8)
    assert loss_fn.lpips is None
    t = torch.linspace(0, 1, 8).view(1, 1, 8, 1, 1)
    h = torch.linspace(0, 6.28, 32).view(1, 1, 1, 32, 1)
    phase = torch.rand(4, 3, 1, 1, 1) * 6.28
    real = torch.sin(h + phase + 3 * t).expand(4, 3, 8, 32, 32).contiguous()  # b c t h w
    fake = torch.rand(4, 3, 8, 32, 32) * 2 - 1
    params = list(loss_fn.discriminator_2d.parameters()) + list(loss_fn.discriminator_3d.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.5, 0.9))
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(12):
        out = loss_fn.discriminator_loss(real, fake, generator=gen)
        opt.zero_grad()
        out["total"].backward()
        opt.step()
        losses.append(out["total"].item())
    assert set(out) == {
        "total",
        "hinge_2d",
        "hinge_3d",
        "logits_real_2d",
        "logits_fake_2d",
        "logits_real_3d",
        "logits_fake_3d",
    }
    assert out["total"].item() == pytest.approx((out["hinge_2d"] + out["hinge_3d"]).item())
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0]
    assert out["logits_real_3d"] > out["logits_fake_3d"] and out["logits_real_2d"] > out["logits_fake_2d"]


def test_select_frames_uses_generator():
    x = torch.arange(2 * 3 * 5).float().view(2, 3, 5, 1, 1).expand(2, 3, 5, 4, 4)  # b c t h w
    x_hat = -x
    x2d, x_hat2d, idx = select_frames(x, x_hat, torch.Generator().manual_seed(7))
    assert x2d.shape == (2, 3, 4, 4) and idx.shape == (2,)
    for b in range(2):
        torch.testing.assert_close(x2d[b], x[b, :, idx[b]])
        torch.testing.assert_close(x_hat2d[b], x_hat[b, :, idx[b]])
    _, _, idx_again = select_frames(x, x_hat, torch.Generator().manual_seed(7))
    assert torch.equal(idx, idx_again)
    torch.manual_seed(3)  # no generator: the global RNG of the input's device
    _, _, a = select_frames(x, x_hat)
    torch.manual_seed(3)
    _, _, b = select_frames(x, x_hat)
    assert torch.equal(a, b)
    draws = torch.cat([select_frames(x, x_hat)[2] for _ in range(50)])
    assert set(draws.tolist()) == set(range(5))


@pytest.fixture(scope="module")
def loss_fn() -> AutoencoderLoss:
    torch.manual_seed(0)
    return AutoencoderLoss(lpips_net="alex", disc_ndf=8)  # original weights 4 / 4 / 1 / 4


def make_clips(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, 4, 32, 32, generator=g) * 2 - 1  # b c t h w
    x_hat = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    return x, x_hat


def test_generator_loss_without_gan(loss_fn):
    x, x_hat = make_clips(0)
    out = loss_fn.generator_loss(x, x_hat, gan_active=False, generator=torch.Generator().manual_seed(1))
    assert set(out) == {"total", "l1", "mse", "lpips", "gan", "fm", "gan_weight"}
    x2d, x_hat2d, _ = select_frames(x, x_hat, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out["l1"], F.l1_loss(x, x_hat))
    torch.testing.assert_close(out["lpips"], loss_fn.lpips(x2d, x_hat2d).mean())
    assert out["gan"] == 0 and out["fm"] == 0 and out["gan_weight"] == 0
    torch.testing.assert_close(out["total"], 4 * out["l1"] + 4 * out["lpips"])
    assert out["mse"] == 0  # off by default, as the original


def test_generator_loss_mse_term(loss_fn):
    x, x_hat = make_clips(0)
    loss_fn.mse_weight = 2.0
    try:
        out = loss_fn.generator_loss(x, x_hat, generator=torch.Generator().manual_seed(1))
    finally:
        loss_fn.mse_weight = 0.0
    torch.testing.assert_close(out["mse"], F.mse_loss(x, x_hat))
    torch.testing.assert_close(out["total"], 4 * out["l1"] + 2 * out["mse"] + 4 * out["lpips"])
    assert out["lpips"] > 0 and not out["l1"].requires_grad


def test_generator_loss_with_gan(loss_fn):
    x, x_hat = make_clips(1)
    x_hat.requires_grad_(True)
    out = loss_fn.generator_loss(x, x_hat, gan_active=True, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out["total"], 4 * out["l1"] + 4 * out["lpips"] + out["gan"] + 4 * out["fm"])
    assert out["gan_weight"] == 1.0

    # The GAN terms by hand, on the same random frames (BatchNorm in train mode: batch statistics).
    x2d, x_hat2d, _ = select_frames(x, x_hat, torch.Generator().manual_seed(2))
    d2, d3 = loss_fn.discriminator_2d, loss_fn.discriminator_3d
    fake_2d, fake_3d, real_2d, real_3d = d2(x_hat2d), d3(x_hat), d2(x2d), d3(x)
    torch.testing.assert_close(out["gan"], -(fake_2d[-1].mean() + fake_3d[-1].mean()))
    fm = sum(
        F.l1_loss(f, r) for f, r in zip(fake_2d[:-1] + fake_3d[:-1], real_2d[:-1] + real_3d[:-1], strict=True)
    )
    torch.testing.assert_close(out["fm"], fm)
    assert out["fm"] > 0

    out["total"].backward()
    assert x_hat.grad is not None and torch.isfinite(x_hat.grad).all() and x_hat.grad.abs().sum() > 0


def test_configurable_weights():
    torch.manual_seed(0)
    loss_fn = AutoencoderLoss(l1_weight=1.0, lpips_weight=0.0, gan_weight=0.25, fm_weight=0.5, disc_ndf=8)
    x, x_hat = make_clips(2)
    out = loss_fn.generator_loss(x, x_hat, gan_active=True)
    assert out["lpips"] == 0 and out["gan_weight"] == 0.25
    torch.testing.assert_close(out["total"], out["l1"] + 0.25 * out["gan"] + 0.5 * out["fm"])


def test_adaptive_gan_weight(loss_fn):
    torch.manual_seed(0)
    feats = torch.randn(2 * 4, 16, 32, 32)  # (b t) c h w: the decoder's features before its last layer
    last = nn.Conv2d(16, 3, 1)
    x, _ = make_clips(3)

    def decode() -> torch.Tensor:
        return torch.tanh(last(feats)).view(2, 4, 3, 32, 32).transpose(1, 2)  # b c t h w

    loss_fn.adaptive_gan_weight = True
    try:
        with pytest.raises(ValueError, match="last_layer"):
            loss_fn.generator_loss(x, decode(), gan_active=True)
        out = loss_fn.generator_loss(
            x, decode(), gan_active=True, last_layer=last.weight, generator=torch.Generator().manual_seed(4)
        )
    finally:
        loss_fn.adaptive_gan_weight = False

    # Manual ratio of gradient norms at the last layer's weight, on the same frames.
    x_hat = decode()
    x2d, x_hat2d, _ = select_frames(x, x_hat, torch.Generator().manual_seed(4))
    rec = 4 * F.l1_loss(x, x_hat) + 4 * loss_fn.lpips(x2d, x_hat2d).mean()
    gan = -(loss_fn.discriminator_2d(x_hat2d)[-1].mean() + loss_fn.discriminator_3d(x_hat)[-1].mean())
    (g_rec,) = torch.autograd.grad(rec, last.weight, retain_graph=True)
    (g_gan,) = torch.autograd.grad(gan, last.weight)
    expected = g_rec.norm() / (g_gan.norm() + 1e-4)
    assert torch.isfinite(out["gan_weight"]) and out["gan_weight"] > 0
    torch.testing.assert_close(out["gan_weight"], expected, rtol=1e-4, atol=0)
    torch.testing.assert_close(
        out["total"],
        4 * out["l1"] + 4 * out["lpips"] + expected * out["gan"] + 4 * out["fm"],
        rtol=1e-4,
        atol=1e-6,
    )

    # Clamped to 1e4 when the GAN gradient vanishes, detached, and refused without autograd.
    w = nn.Parameter(torch.ones(3))
    big = adaptive_gan_weight((w**2).sum(), 1e-12 * w.sum(), w)
    assert big.item() == 1e4 and not big.requires_grad
    with torch.no_grad(), pytest.raises(RuntimeError, match="needs autograd"):
        adaptive_gan_weight((w**2).sum(), w.sum(), w)


def test_bad_clip_shapes(loss_fn):
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        loss_fn.generator_loss(torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        loss_fn.discriminator_loss(torch.zeros(2, 3, 4, 32, 32), torch.zeros(2, 3, 4, 32, 16))
