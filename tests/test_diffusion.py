"""Diffusion process: schedule values, loss, sampler maths on analytic models, seeding, long videos."""

from __future__ import annotations

import math

import pytest
import torch

from pvdm.diffusion import (
    NoiseSchedule,
    Sampler,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    q_sample,
    sample,
    sample_long,
    training_loss,
)
from pvdm.models.unet import TriplaneUNet, UNetConfig

S = NoiseSchedule()

pytestmark = pytest.mark.usefixtures("one_thread")


def abar(i: int) -> float:
    """alphas_cumprod[i] from the original's formula (docs/original-pvdm.md#schedule), in Python floats."""
    lo, hi = math.sqrt(0.0015), math.sqrt(0.0195)
    return math.prod(1 - (lo + k * (hi - lo) / 999) ** 2 for k in range(i + 1))


# ---------------------------------------------------------------------------- schedule


def test_schedule_matches_the_original_formula():
    assert S.num_timesteps == 1000 and S.betas.dtype == torch.float64
    assert S.betas[0].item() == pytest.approx(0.0015, rel=1e-12)
    assert S.betas[-1].item() == pytest.approx(0.0195, rel=1e-12)
    for i in (0, 1, 499, 999):
        assert S.alphas_cumprod[i].item() == pytest.approx(abar(i), rel=1e-10)
    assert S.alphas_cumprod[-1].item() == pytest.approx(1.423e-4, rel=1e-3)  # docs/original-pvdm.md#schedule
    assert S.alphas_cumprod_prev[0].item() == 1.0
    i = 300
    beta, a, a_prev = S.betas[i].item(), abar(i), abar(i - 1)
    assert S.posterior_variance[i].item() == pytest.approx(beta * (1 - a_prev) / (1 - a), rel=1e-10)
    assert S.posterior_mean_coef1[i].item() == pytest.approx(beta * math.sqrt(a_prev) / (1 - a), rel=1e-10)
    assert S.posterior_mean_coef2[i].item() == pytest.approx((1 - a_prev) * math.sqrt(1 - beta) / (1 - a), rel=1e-10)
    assert S.posterior_variance[0].item() == 0.0
    assert S.posterior_log_variance_clipped[0].item() == pytest.approx(math.log(1e-20))


def test_ddim_time_pairs_follow_the_original_convention():
    p100, p400 = ddim_timesteps(100), ddim_timesteps(400)
    assert len(p100) == 100 and p100[:2] == [(999, 989), (989, 979)] and p100[-2:] == [(19, 9), (9, -1)]
    assert len(p400) == 400 and p400[:2] == [(999, 996), (996, 994)] and p400[-2:] == [(4, 1), (1, -1)]
    assert ddim_timesteps(1000) == [(i, i - 1) for i in range(999, -1, -1)]
    with pytest.raises(ValueError, match="steps"):
        ddim_timesteps(0)


def test_q_sample_and_training_loss():
    x0 = torch.rand(3, 4, 10) * 2 - 1
    noise = torch.randn(3, 4, 10)
    t = torch.tensor([0, 500, 999])
    xt = q_sample(x0, t, noise)
    for b, i in enumerate(t.tolist()):
        torch.testing.assert_close(xt[b], math.sqrt(abar(i)) * x0[b] + math.sqrt(1 - abar(i)) * noise[b])

    seen = {}

    def recorder(x, tt, cond):
        seen.update(x=x, t=tt, cond=cond)
        return torch.zeros_like(x)

    cond = torch.randn(3, 4, 10)
    loss = training_loss(recorder, x0, t, noise, cond=cond)
    torch.testing.assert_close(seen["x"], xt)
    assert seen["t"] is t and seen["cond"] is cond
    assert loss.item() == pytest.approx(noise.pow(2).mean().item(), rel=1e-6)  # MSE by default
    per_sample = training_loss(recorder, x0, t, noise, reduction="none")
    torch.testing.assert_close(per_sample, noise.pow(2).mean(dim=(1, 2)))
    assert training_loss(recorder, x0, t, noise, loss_type="l1").item() == pytest.approx(noise.abs().mean().item())
    oracle = lambda x, tt, c: noise  # noqa: E731
    assert training_loss(oracle, x0, t, noise).item() == 0.0
    # Without t / noise the draws come from the generator: same seed, same loss.
    model = lambda x, tt, c: x * 0.5  # noqa: E731
    a = training_loss(model, x0, generator=torch.Generator().manual_seed(3))
    b = training_loss(model, x0, generator=torch.Generator().manual_seed(3))
    c = training_loss(model, x0, generator=torch.Generator().manual_seed(4))
    assert a.item() == b.item() != c.item()
    with pytest.raises(ValueError, match="loss_type"):
        training_loss(model, x0, loss_type="huber")


def test_min_snr_weighting():
    x0, noise = torch.rand(3, 4, 10) * 2 - 1, torch.randn(3, 4, 10)
    t = torch.tensor([0, 500, 999])
    zero = lambda x, tt, c: torch.zeros_like(x)  # noqa: E731
    plain = training_loss(zero, x0, t, noise, reduction="none")
    snr = torch.tensor([abar(i) / (1 - abar(i)) for i in t.tolist()])
    assert snr[0] > 5 > snr[1] > snr[2]  # low noise is clipped, high noise keeps weight 1 (eps)
    weighted = training_loss(zero, x0, t, noise, reduction="none", min_snr_gamma=5.0)
    torch.testing.assert_close(weighted, plain * snr.clamp(max=5) / snr)
    assert weighted[1:].tolist() == pytest.approx(plain[1:].tolist(), rel=1e-6)
    v_plain = training_loss(zero, x0, t, noise, reduction="none", prediction="v")
    v_weighted = training_loss(zero, x0, t, noise, reduction="none", prediction="v", min_snr_gamma=5.0)
    torch.testing.assert_close(v_weighted, v_plain * snr.clamp(max=5) / (snr + 1))
    with pytest.raises(ValueError, match="min_snr_gamma"):
        training_loss(zero, x0, t, noise, min_snr_gamma=0.0)


def test_v_prediction_target_and_inversion():
    x0 = torch.rand(3, 4, 10, dtype=torch.float64) * 2 - 1
    noise = torch.randn(3, 4, 10, dtype=torch.float64)
    t = torch.tensor([0, 500, 999])
    v = S.v_target(x0, t, noise)
    for b, i in enumerate(t.tolist()):  # the formula, in plain floats
        torch.testing.assert_close(v[b], math.sqrt(abar(i)) * noise[b] - math.sqrt(1 - abar(i)) * x0[b])
    eps, x0_hat = S.eps_and_x0(q_sample(x0, t, noise), t, v, "v")
    torch.testing.assert_close(eps, noise)
    torch.testing.assert_close(x0_hat, x0)
    eps_e, x0_e = S.eps_and_x0(q_sample(x0, t, noise), t, noise, "eps")
    assert eps_e is noise and torch.allclose(x0_e, x0)
    oracle = lambda x, tt, c: S.v_target(x0, tt, noise)  # noqa: E731
    assert training_loss(oracle, x0, t, noise, prediction="v").item() == 0.0
    assert training_loss(oracle, x0, t, noise).item() > 0.1  # read as eps, the same output is wrong
    with pytest.raises(ValueError, match="prediction"):
        training_loss(oracle, x0, t, noise, prediction="x0")
    with pytest.raises(ValueError, match="prediction"):
        UNetConfig(prediction="x0")


# ---------------------------------------------------------------------------- samplers on analytic models


def point_model(x_star: torch.Tensor):
    """Optimal eps predictor when the data is the single point x*."""

    def eps(x, t, cond):
        a = S.alphas_cumprod[t].to(x.dtype).view(-1, 1, 1)
        return (x - a.sqrt() * x_star) / (1 - a).sqrt()

    return eps


def gaussian_model(mu: float, std: float):
    """Optimal eps predictor E[eps | x_t] for data ~ N(mu, std^2) per coordinate."""

    def eps(x, t, cond):
        a = S.alphas_cumprod[t].view(-1, 1, 1)
        return ((1 - a).sqrt() * (x.double() - a.sqrt() * mu) / (a * std**2 + 1 - a)).to(x.dtype)

    return eps


def as_v(eps_model, prediction: str):
    """The same optimal predictor, outputting v instead of eps when asked."""
    if prediction == "eps":
        return eps_model

    def v(x, t, cond):
        eps = eps_model(x, t, cond)
        x0 = S.predict_x0(x, t, eps)
        return S.v_target(x0, t, eps)

    return v


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim_eta0", "ddim_eta1"])
def test_samplers_land_on_a_single_data_point(sampler, prediction):
    x_star = torch.linspace(-0.9, 0.9, 12).view(1, 2, 6)
    model = as_v(point_model(x_star), prediction)
    shape = (3, 2, 6)
    if sampler == "ddpm":
        out = ddpm_sample(model, shape, generators=[0, 1, 2], prediction=prediction)
    else:
        out = ddim_sample(model, shape, steps=50, eta=0.0 if sampler == "ddim_eta0" else 1.0, generators=[0, 1, 2],
                          prediction=prediction)
    torch.testing.assert_close(out, x_star.expand(shape), atol=1e-5, rtol=0)


def linear_gaussian_prediction(mu: float, std: float, pairs: list[tuple[int, int]], eta: float | None):
    """Exact output mean/std of a sampler driven by ``gaussian_model``: every update is affine in x
    plus independent noise, so mean and variance follow a scalar recursion (float64, from the
    formulas of the DDPM posterior and of DDIM, independent of the implementation)."""
    ac = [abar(i) for i in range(1000)]
    m, v = 0.0, 1.0  # x_T ~ N(0, 1)
    for t, t_next in pairs:
        a = ac[t]
        k = math.sqrt(1 - a) / (a * std**2 + 1 - a)  # eps(x) = k (x - sqrt(a) mu)
        p, q = (1 - math.sqrt(1 - a) * k) / math.sqrt(a), k * math.sqrt(1 - a) * mu  # x0_hat = p x + q
        if t_next < 0:
            gain, bias, noise_var = p, q, 0.0
        elif eta is None:  # ancestral: posterior q(x_{t-1} | x_t, x0_hat)
            a_prev, beta = ac[t - 1], 1 - ac[t] / ac[t - 1]
            c1, c2 = beta * math.sqrt(a_prev) / (1 - a), (1 - a_prev) * math.sqrt(1 - beta) / (1 - a)
            gain, bias, noise_var = c1 * p + c2, c1 * q, beta * (1 - a_prev) / (1 - a)
        else:  # DDIM
            an = ac[t_next]
            sigma2 = eta**2 * (1 - a / an) * (1 - an) / (1 - a)
            c = math.sqrt(1 - an - sigma2)
            gain = math.sqrt(an) * p + c * k
            bias, noise_var = math.sqrt(an) * q - c * k * math.sqrt(a) * mu, sigma2
        m, v = gain * m + bias, gain**2 * v + noise_var
    return m, math.sqrt(v)


@pytest.mark.parametrize("sampler, steps, eta", [("ddpm", 1000, None), ("ddim", 50, 0.0), ("ddim", 100, 1.0)])
def test_samplers_follow_the_exact_linear_gaussian_recursion(sampler, steps, eta):
    mu, std = 0.2, 0.15  # inside [-1, 1]: x0 clipping does not bite
    model = gaussian_model(mu, std)
    shape = (8, 1, 4000)
    gens = list(range(8))
    if sampler == "ddpm":
        out = ddpm_sample(model, shape, generators=gens)
        # The last step (t = 0) is the noiseless posterior mean, which equals x0_hat (abar_prev = 1).
        pairs = [(t, t - 1) for t in range(999, 0, -1)] + [(0, -1)]
        want_mean, want_std = linear_gaussian_prediction(mu, std, pairs, None)
    else:
        out = ddim_sample(model, shape, steps=steps, eta=eta, generators=gens)
        want_mean, want_std = linear_gaussian_prediction(mu, std, ddim_timesteps(steps), eta)
    # Sane targets; the std shrinks where the last step returns E[x0 | x_t] from t = 9 (DDIM-100).
    assert want_mean == pytest.approx(mu, abs=0.01) and 0.5 * std < want_std < 1.01 * std
    assert out.mean().item() == pytest.approx(want_mean, abs=0.003)
    assert out.std().item() == pytest.approx(want_std, rel=0.02)


def test_named_samplers_walk_their_time_steps():
    calls = []

    def model(x, t, cond):
        calls.append(int(t[0]))
        return torch.zeros_like(x)

    sample(model, (1, 1, 3), Sampler("ddpm", 1000), generators=[0])
    assert calls == list(range(999, -1, -1))  # ancestral over all steps
    calls.clear()
    sample(model, (1, 1, 3), Sampler("ddim", 400, 1.0), generators=[0])
    assert len(calls) == 400 and calls[:3] == [999, 996, 994]
    assert Sampler("ddim", 400, 1.0).label == "ddim400_eta1" and Sampler("ddpm", 1000).label == "ddpm1000"
    assert Sampler.from_config({"name": "ddim", "steps": 50, "eta": 0}).to_dict() == {"name": "ddim", "steps": 50, "eta": 0.0}
    with pytest.raises(ValueError, match="walks all 1000 steps"):
        sample(model, (1, 1, 3), Sampler("ddpm", 400), generators=[0])
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        Sampler("euler", 10)


def test_x0_is_clipped():
    model = point_model(torch.full((1, 1, 5), 5.0))  # x0_hat = 5 at every step
    out = ddim_sample(model, (2, 1, 5), steps=10, eta=0.0, generators=[0, 1])
    assert torch.equal(out, torch.ones(2, 1, 5))
    out = ddim_sample(model, (2, 1, 5), steps=10, eta=0.0, generators=[0, 1], clip=False)
    torch.testing.assert_close(out, torch.full((2, 1, 5), 5.0))
    out = ddpm_sample(model, (2, 1, 5), generators=[0, 1])
    assert torch.equal(out, torch.ones(2, 1, 5))


def test_guidance_mixes_conditional_and_zero_condition_predictions():
    cond = torch.ones(2, 1, 3)
    seen = []

    def model(x, t, c):
        seen.append(c)
        return torch.full_like(x, 0.1) if c.abs().sum() > 0 else torch.zeros_like(x)

    x1 = ddim_sample(model, (2, 1, 3), steps=1, eta=0.0, cond=cond, guidance=2.0, generators=[5, 6], clip=False)
    x0 = ddim_sample(model, (2, 1, 3), steps=1, eta=0.0, cond=cond, guidance=0.0, generators=[5, 6], clip=False)
    assert len(seen) == 3  # 2 calls with guidance, 1 without
    noise = torch.stack([torch.randn(1, 3, generator=torch.Generator().manual_seed(s)) for s in (5, 6)])
    a = S.alphas_cumprod[999].item()
    torch.testing.assert_close(x0, (noise - math.sqrt(1 - a) * 0.1) / math.sqrt(a))
    torch.testing.assert_close(x1, (noise - math.sqrt(1 - a) * 0.3) / math.sqrt(a))


# ---------------------------------------------------------------------------- seeding


def small_unet() -> TriplaneUNet:
    torch.manual_seed(0)
    model = TriplaneUNet(UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                    attention_resolutions=(2,), num_heads=2, latent_side=4, latent_frames=4))
    with torch.no_grad():  # non-trivial output layers
        for p in model.parameters():
            if p.ndim > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return model.eval()


def test_per_sample_seeds_are_independent_of_batch_size_and_deterministic():
    model = small_unet()
    shape = (3, 4, model.cfg.latent_length)
    out = ddim_sample(model, shape, steps=5, eta=1.0, generators=[11, 12, 13])
    again = ddim_sample(model, shape, steps=5, eta=1.0, generators=[11, 12, 13])
    assert torch.equal(out, again)
    alone = ddim_sample(model, (1, *shape[1:]), steps=5, eta=1.0, generators=[12])
    torch.testing.assert_close(alone[0], out[1], atol=1e-4, rtol=1e-4)
    other = ddim_sample(model, (1, *shape[1:]), steps=5, eta=1.0, generators=[99])
    assert (other[0] - out[1]).abs().max() > 1e-2
    # Generators objects work too and give the same result as their seeds.
    gens = [torch.Generator().manual_seed(s) for s in (11, 12, 13)]
    assert torch.equal(ddim_sample(model, shape, steps=5, eta=1.0, generators=gens), out)
    with pytest.raises(ValueError, match="one generator per sample"):
        ddim_sample(model, shape, steps=5, generators=[1, 2])


def test_ddpm_per_sample_seeds_with_the_analytic_model():
    model = gaussian_model(0.0, 0.5)
    batch = ddpm_sample(model, (4, 2, 7), generators=[1, 2, 3, 4])
    alone = ddpm_sample(model, (1, 2, 7), generators=[3])
    torch.testing.assert_close(alone[0], batch[2])


def test_progress_callback_sees_every_step():
    steps = []
    ddim_sample(lambda x, t, c: torch.zeros_like(x), (1, 1, 2), steps=7, generators=[0],
                callback=lambda i, n, x: steps.append((i, n, x.shape)))
    assert steps == [(i, 7, torch.Size([1, 1, 2])) for i in range(7)]
    ddim_sample(lambda x, t, c: torch.zeros_like(x), (1, 1, 2), steps=3, generators=[0], progress=True)


# ---------------------------------------------------------------------------- long videos


def test_sample_long_conditions_each_clip_on_the_previous_clean_latent():
    calls = []  # (clip-independent) record of every model call's cond

    def model(x, t, cond):
        calls.append(None if cond is None else cond.clone())
        return 0.3 * x  # any deterministic predictor

    first = torch.full((2, 1, 4), 0.5)
    clips = sample_long(model, 3, (2, 1, 4), Sampler("ddim", 4, 1.0), first_cond=first, generators=[7, 8])
    assert clips.shape == (3, 2, 1, 4)
    assert len(calls) == 12
    for c in calls[:4]:
        assert torch.equal(c, first)
    for k in (1, 2):
        for c in calls[4 * k : 4 * k + 4]:
            assert torch.equal(c, clips[k - 1])
    # Clips differ (the generators advance), and chaining is deterministic under the seeds.
    assert not torch.equal(clips[0], clips[1])
    assert torch.equal(sample_long(model, 3, (2, 1, 4), Sampler("ddim", 4), first_cond=first, generators=[7, 8]), clips)
    # Without first_cond the first clip gets None (the model's zeros condition).
    calls.clear()
    sample_long(model, 2, (2, 1, 4), Sampler("ddim", 3), generators=[7, 8])
    assert all(c is None for c in calls[:3]) and all(c is not None for c in calls[3:])


def test_sample_long_with_the_unet_is_batch_independent():
    model = small_unet()
    shape = (2, 4, model.cfg.latent_length)
    clips = sample_long(model, 2, shape, Sampler("ddim", 3), generators=[1, 2])
    alone = sample_long(model, 2, (1, *shape[1:]), Sampler("ddim", 3), generators=[2])
    torch.testing.assert_close(alone[:, 0], clips[:, 1], atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_integer_seeds_give_the_same_samples_on_cuda_and_cpu():
    model = small_unet()
    shape = (2, 4, model.cfg.latent_length)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        cpu = ddim_sample(model, shape, steps=4, eta=1.0, generators=[1, 2])
        gpu = ddim_sample(model.cuda(), shape, steps=4, eta=1.0, generators=[1, 2], device="cuda")
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-3)
