"""DPM-Solver++(2M) and its SDE variant: agreement with diffusers' scheduler, second-order convergence
on Gaussian data whose exact noise predictor is known, closeness to the data at few steps, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pvdm.diffusion import NoiseSchedule, Sampler, make_generators, per_sample_randn, sample, sample_long

SCHEDULE = NoiseSchedule()
AC = SCHEDULE.alphas_cumprod  # float64


def smooth_network(prediction: str):
    """A fixed network whose outputs stay O(1) in x0 (the exact predictor of near-zero data plus a
    seeded nonlinear perturbation), so an absolute tolerance means something at every t."""
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(4, 4, 3, padding=1).double()

    def model(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        a = AC[t].view(-1, 1, 1)
        with torch.no_grad():
            wiggle = 0.2 * torch.tanh(conv(x.double()))
        base = (1 - a).sqrt() * x.double() if prediction == "eps" else a.sqrt() * x.double()
        return (base + wiggle).float()

    return model


def diffusers_reference(model, sampler: Sampler, shape: tuple[int, ...], seeds: list[int], prediction: str):
    """The same sampling run through diffusers' DPMSolverMultistepScheduler, fed our time steps and our
    per-sample noise draws (x_T first, then one per stochastic step)."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, trained_betas=SCHEDULE.betas.numpy(), solver_order=2, solver_type="midpoint",
        prediction_type={"eps": "epsilon", "v": "v_prediction"}[prediction], final_sigmas_type="zero",
        algorithm_type="dpmsolver++" if sampler.name == "dpmpp2m" else "sde-dpmsolver++", lower_order_final=True,
    )
    pairs = sampler.timesteps(1000, SCHEDULE)
    scheduler.set_timesteps(timesteps=[t for t, _ in pairs])
    gens = make_generators(seeds)
    x = per_sample_randn(shape, gens, torch.device("cpu"), torch.float32)
    for (t, t_next), step in zip(pairs, scheduler.timesteps, strict=True):
        assert int(step) == t
        out = model(x, torch.full((shape[0],), t), None)
        noise = per_sample_randn(shape, gens, torch.device("cpu"), torch.float32) if (
            sampler.name == "dpmpp2m_sde" and t_next >= 0) else None
        x = scheduler.step(out, step, x, variance_noise=noise).prev_sample
    return x


@pytest.mark.parametrize("name", ["dpmpp2m", "dpmpp2m_sde"])
@pytest.mark.parametrize("spacing, prediction, steps", [("time", "eps", 15), ("logsnr", "v", 20), ("time", "v", 7)])
def test_dpmpp2m_equals_diffusers_dpm_solver_multistep(name, spacing, prediction, steps):
    model = smooth_network(prediction)
    sampler = Sampler(name, steps, spacing=spacing, clip=False)
    shape, seeds = (3, 4, 8), [1, 2, 3]
    ours = sample(model, shape, sampler, generators=seeds, prediction=prediction)
    theirs = diffusers_reference(model, sampler, shape, seeds, prediction)
    assert ours.abs().max() > 0.1  # a real output, not a collapse to 0
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


# Gaussian data N(mu, std^2) per dimension, with variances over two orders of magnitude: the exact
# noise predictor is known in closed form, and so is the probability-flow ODE's map from x_T to any t
# (it keeps the standardized value (x - mean_t) / sd_t).
DIMS = 16
MU = torch.linspace(-0.5, 0.5, DIMS, dtype=torch.float64).view(1, -1, 1)
STD = torch.logspace(-1.3, 0, DIMS, dtype=torch.float64).view(1, -1, 1)


def gaussian_eps(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    a = AC[t].view(-1, 1, 1)
    x0 = MU + STD**2 * a.sqrt() / (a * STD**2 + 1 - a) * (x - a.sqrt() * MU)  # E[x0 | x_t]
    return (x - a.sqrt() * x0) / (1 - a).sqrt()


def exact_flow(x_T: torch.Tensor, t: int) -> torch.Tensor:
    a_T, a = AC[-1], (AC[t] if t >= 0 else torch.tensor(1.0, dtype=torch.float64))
    z = (x_T - a_T.sqrt() * MU) / (a_T * STD**2 + 1 - a_T).sqrt()
    return a.sqrt() * MU + (a * STD**2 + 1 - a).sqrt() * z


def run_gaussian(sampler: Sampler) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """x_T, the output and every intermediate x of two samples, in float64."""
    shape, seeds = (2, DIMS, 1), [5, 6]
    x_T = per_sample_randn(shape, make_generators(seeds), torch.device("cpu"), torch.float64)
    xs: list[torch.Tensor] = []
    out = sample(gaussian_eps, shape, sampler, generators=seeds, clip=False, dtype=torch.float64,
                 callback=lambda i, n, x: xs.append(x.clone()))
    return x_T, out, xs


def ode_error_near(sampler: Sampler, t_star: int = 200) -> float:
    """Max error against the exact ODE solution at the grid time closest to ``t_star`` (away from the
    final jump to sigma = 0, which every sampler makes in one first-order step)."""
    x_T, _, xs = run_gaussian(sampler)
    pairs = sampler.timesteps(1000, SCHEDULE)
    i = min(range(len(pairs)), key=lambda k: abs(pairs[k][1] - t_star))
    return (xs[i] - exact_flow(x_T, pairs[i][1])).abs().max().item()


def test_dpmpp2m_error_falls_at_second_order_ddim_at_first():
    steps = [10, 20, 40, 80]
    dpm = [ode_error_near(Sampler("dpmpp2m", n, clip=False)) for n in steps]
    ddim = [ode_error_near(Sampler("ddim", n, 0.0, clip=False)) for n in steps]
    dpm_orders = [math.log2(a / b) for a, b in zip(dpm, dpm[1:], strict=False)]
    ddim_orders = [math.log2(a / b) for a, b in zip(ddim, ddim[1:], strict=False)]
    # Measured: dpmpp2m 2.1, 2.06, 2.03; ddim 0.98, 0.99, 0.99.
    assert all(1.8 < p < 2.3 for p in dpm_orders), dpm_orders
    assert all(0.8 < p < 1.2 for p in ddim_orders), ddim_orders
    assert all(a < b / 4 for a, b in zip(dpm, ddim, strict=True))


def output_w2(sampler: Sampler) -> float:
    """W2 distance between the sampler's output distribution and the data's. A deterministic sampler
    driven by ``gaussian_eps`` is affine per dimension (x_out = A x_T + B), so two samples give A and B,
    and x_T ~ N(0, 1) gives the output N(B, A^2) exactly."""
    x_T, out, _ = run_gaussian(sampler)
    gain = (out[0] - out[1]) / (x_T[0] - x_T[1])
    bias = out[0] - gain * x_T[0]
    return ((bias - MU) ** 2 + (gain.abs() - STD) ** 2).sum().sqrt().item()


@pytest.mark.parametrize("steps", [10, 20])
def test_dpmpp2m_output_is_closer_to_the_data_than_ddim_eta0_at_equal_steps(steps):
    ddim = output_w2(Sampler("ddim", steps, 0.0, clip=False))
    dpm_time = output_w2(Sampler("dpmpp2m", steps, spacing="time", clip=False))
    dpm_logsnr = output_w2(Sampler("dpmpp2m", steps, spacing="logsnr", clip=False))
    assert dpm_time < ddim and dpm_logsnr < 0.5 * ddim, (ddim, dpm_time, dpm_logsnr)
    if steps == 20:  # closer as steps grow (measured 0.081 at 10 steps, 0.038 at 20)
        assert dpm_logsnr < 0.6 * output_w2(Sampler("dpmpp2m", 10, spacing="logsnr", clip=False))


def test_dpmpp2m_sde_samples_the_data_distribution():
    mu, std = MU[0, :4, 0], STD[0, 4:16:3, 0]  # 4 dims, std 0.09 ... 0.8
    shape = (3000, 4, 1)

    def eps(x, t, cond):
        a = AC[t].view(-1, 1, 1)
        m, s = mu.view(1, -1, 1), std.view(1, -1, 1)
        x0 = m + s**2 * a.sqrt() / (a * s**2 + 1 - a) * (x - a.sqrt() * m)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    def draw(name: str) -> torch.Tensor:
        return sample(eps, shape, Sampler(name, 30, spacing="logsnr", clip=False), generators=list(range(3000)),
                      dtype=torch.float64)[:, :, 0]

    sde, ode = draw("dpmpp2m_sde"), draw("dpmpp2m")
    torch.testing.assert_close(sde.mean(0), mu, rtol=0, atol=0.04)
    # Both end with x0_hat from t = 1, which shrinks the narrowest dimension (std 0.11) by ~10 %: the SDE
    # sampler lands where the ODE sampler does (measured ratio 1.00-1.02), on the data's std elsewhere.
    torch.testing.assert_close(sde.std(0), ode.std(0), rtol=0.04, atol=0)
    ratio = sde.std(0) / std
    assert 0.85 < ratio[0] < 0.95 and ((ratio[1:] - 1).abs() < 0.06).all(), ratio


def test_multistep_samplers_keep_per_sample_seeds_and_chain_clips():
    model = smooth_network("v")
    for name in ("dpmpp2m", "dpmpp2m_sde"):
        s = Sampler(name, 6, spacing="logsnr")
        pair = sample_long(model, 2, (2, 4, 8), s, generators=[7, 8], prediction="v")
        alone = sample_long(model, 2, (1, 4, 8), s, generators=[8], prediction="v")
        torch.testing.assert_close(pair[:, 1:], alone, rtol=0, atol=1e-6)  # a sample depends on its seed only
        assert not torch.equal(pair[0], pair[1])
    # The ODE sampler is deterministic given x_T: the SDE one is not the same run.
    ode = sample(model, (2, 4, 8), Sampler("dpmpp2m", 6), generators=[7, 8], prediction="v")
    sde = sample(model, (2, 4, 8), Sampler("dpmpp2m_sde", 6), generators=[7, 8], prediction="v")
    assert (ode - sde).abs().max() > 1e-3


def test_sampler_cards_labels_and_time_steps():
    s = Sampler.from_config({"name": "dpmpp2m", "steps": 20, "eta": 1.0, "spacing": "logsnr", "clip": True})
    assert s.label == "dpmpp2m20_logsnr" and s.evaluations == 20
    assert s.to_dict() == {"name": "dpmpp2m", "steps": 20, "spacing": "logsnr", "clip": True, "order": 2}
    assert Sampler("dpmpp2m_sde", 25, clip=False).label == "dpmpp2m_sde25_time_noclip"
    # DDIM/DDPM cards are what they were (no rerun of an unchanged config); a turned-off clip shows.
    assert Sampler("ddim", 400, 1.0).to_dict() == {"name": "ddim", "steps": 400, "eta": 1.0}
    assert Sampler("ddim", 50, 0.0, clip=False).to_dict()["clip"] is False
    pairs = Sampler("dpmpp2m", 10).timesteps(1000)
    assert [t for t, _ in pairs] == [999, 899, 799, 699, 599, 500, 400, 300, 200, 100] and pairs[-1][1] == -1
    logsnr = [t for t, _ in Sampler("dpmpp2m", 10, spacing="logsnr").timesteps(1000)]
    lam = [0.5 * math.log(AC[t] / (1 - AC[t])) for t in logsnr]
    gaps = [a - b for a, b in zip(lam[1:], lam, strict=False)]
    assert logsnr[0] == 999 and max(gaps) - min(gaps) < 0.1 * min(gaps)  # uniform in log-SNR up to integer rounding


def test_clip_is_a_sampler_option():
    def big_x0(x, t, cond):  # x0_hat = 5 at every t (eps form)
        a = AC[t].view(-1, 1, 1)
        return ((x - a.sqrt() * 5.0) / (1 - a).sqrt()).float()

    clipped = sample(big_x0, (2, 1, 5), Sampler("dpmpp2m", 8), generators=[0, 1])
    assert torch.equal(clipped, torch.ones(2, 1, 5))
    free = sample(big_x0, (2, 1, 5), Sampler("dpmpp2m", 8, clip=False), generators=[0, 1])
    torch.testing.assert_close(free, torch.full((2, 1, 5), 5.0))


@pytest.mark.parametrize("config, message", [
    ({"name": "dpmpp3m", "steps": 20}, "unknown sampler 'dpmpp3m'"),
    ({"name": "dpmpp2m", "steps": 1}, r"steps must be in \[2, 1000\]"),
    ({"name": "dpmpp2m_sde", "steps": 1001}, r"steps must be in \[2, 1000\]"),
    ({"name": "dpmpp2m", "steps": 50, "spacing": "logsnr"}, "spacing logsnr with 50 steps puts steps 46 and 47 on "
                                                            "time step 2"),
    ({"name": "dpmpp2m", "steps": 20, "spacing": "karras"}, "spacing must be one of"),
    ({"name": "ddim", "steps": 0}, r"steps must be in \[1, 1000\]"),
])
def test_bad_sampler_settings_fail_at_once(config, message):
    with pytest.raises(ValueError, match=message):
        Sampler.from_config({"eta": 1.0, **config})


@pytest.mark.parametrize("sampler, message", [
    ({"name": "dpmpp2m", "steps": 50, "spacing": "logsnr"}, "puts steps 46 and 47 on time step 2 of 1000"),
    ({"name": "ddpm", "steps": 400}, "the ddpm sampler walks all 1000 steps; got steps=400"),
])
def test_a_bad_sampler_stops_the_dag_before_any_job(sampler, message):
    from pvdm.config import load_config
    from pvdm.dag import Dag

    cfg = load_config(Path(__file__).parents[1] / "config" / "config.yaml")
    cfg["experiments"]["mnist"]["sampling"]["sampler"] = sampler
    with pytest.raises(ValueError, match=f"^experiments.mnist.sampling.sampler: .*{message}"):
        Dag(cfg)
    cfg["experiments"]["mnist"]["sampling"]["sampler"] = {"name": "dpmpp2m", "steps": 30, "spacing": "logsnr"}
    assert Dag(cfg)["mnist"].sampler.label == "dpmpp2m30_logsnr"
