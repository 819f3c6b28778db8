"""Samplers: DDPM ancestral, DDIM with eta (PVDM's time pairs), and long-video clip chaining.

Every random draw of sample b comes from its own generator ``generators[b]`` (an int seed or a
``torch.Generator``), so a sample depends on its seed only, not on the batch it is drawn in.
Integer seeds make CPU generators: the same seed gives the same noise on any device.

The original picks the sampler by step count (``sample`` does the same): 1000 steps -> ancestral
DDPM; fewer -> DDIM. Its paper numbers use "400 steps, eta = 1", i.e. DDIM with 400 steps and
eta = 1 (design doc 3.6). Both clip the predicted x0 to [-1, 1] (the latents are tanh-bounded).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from pvdm.diffusion.schedule import Model, NoiseSchedule
from pvdm.utils.progress import Progress

Callback = Callable[[int, int, torch.Tensor], None]  # (step index, number of steps, current x)


def make_generators(seeds: Sequence[int | torch.Generator]) -> list[torch.Generator]:
    """One generator per sample; ints become seeded CPU generators, generators pass through."""
    return [s if isinstance(s, torch.Generator) else torch.Generator().manual_seed(int(s)) for s in seeds]


def per_sample_randn(
    shape: Sequence[int], generators: list[torch.Generator] | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``[B, *shape[1:]]`` standard normal; row b drawn from generators[b] (or the global RNG if None)."""
    if generators is None:
        return torch.randn(tuple(shape), device=device, dtype=dtype)
    if len(generators) != shape[0]:
        raise ValueError(f"need one generator per sample: batch {shape[0]}, got {len(generators)} generators")
    rows = [torch.randn(tuple(shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generators]
    return torch.stack(rows).to(device)


def ddim_timesteps(steps: int, num_timesteps: int = 1000) -> list[tuple[int, int]]:
    """PVDM's (t, t_next) pairs: linspace(-1, T-1, steps+1) in float32, truncated to int, reversed.

    steps=100 -> (999, 989), ..., (9, -1); steps=400 -> (999, 996), (996, 994), ..., (4, 1), (1, -1).
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}], got {steps}")
    times = torch.linspace(-1, num_timesteps - 1, steps + 1).int().tolist()[::-1]
    return list(zip(times[:-1], times[1:], strict=True))


def _predict_eps(
    model: Model, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, guidance: float
) -> torch.Tensor:
    eps = model(x, t, cond)
    if guidance and cond is not None:
        # Classifier-free guidance against the all-zeros ("dropped") condition, as the original's DDIM.
        eps = (1.0 + guidance) * eps - guidance * model(x, t, torch.zeros_like(cond))
    return eps


def _setup(
    shape: Sequence[int],
    generators: Sequence[int | torch.Generator] | None,
    device: torch.device | str | None,
    schedule: NoiseSchedule | None,
) -> tuple[NoiseSchedule, list[torch.Generator] | None, torch.device]:
    if len(shape) < 2:
        raise ValueError(f"shape must be [B, ...], got {list(shape)}")
    gens = make_generators(generators) if generators is not None else None
    return schedule or NoiseSchedule(), gens, torch.device(device or "cpu")


@torch.no_grad()
def ddpm_sample(
    model: Model,
    shape: Sequence[int],
    *,
    cond: torch.Tensor | None = None,
    generators: Sequence[int | torch.Generator] | None = None,
    schedule: NoiseSchedule | None = None,
    clip: bool = True,
    guidance: float = 0.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Ancestral sampling over all T steps: x_{t-1} ~ q(x_{t-1} | x_t, clip(x0_hat)); no noise at t = 0."""
    schedule, gens, device = _setup(shape, generators, device, schedule)
    x = per_sample_randn(shape, gens, device, dtype)  # b c l
    n = schedule.num_timesteps
    with Progress(n, "ddpm sampling") if progress else _NoProgress() as bar:
        for i, step in enumerate(reversed(range(n))):
            t = torch.full((shape[0],), step, device=device, dtype=torch.long)
            x0 = schedule.predict_x0(x, t, _predict_eps(model, x, t, cond, guidance))
            if clip:
                x0 = x0.clamp(-1.0, 1.0)
            mean, log_var = schedule.q_posterior(x0, x, t)
            x = mean + (0.5 * log_var).exp() * per_sample_randn(shape, gens, device, dtype) if step > 0 else mean
            bar.update(1)
            if callback is not None:
                callback(i, n, x)
    return x


@torch.no_grad()
def ddim_sample(
    model: Model,
    shape: Sequence[int],
    *,
    steps: int = 100,
    eta: float = 1.0,
    cond: torch.Tensor | None = None,
    generators: Sequence[int | torch.Generator] | None = None,
    schedule: NoiseSchedule | None = None,
    clip: bool = True,
    guidance: float = 0.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DDIM (Song et al.) on PVDM's time pairs; the last step returns the clipped x0 prediction.

    sigma = eta * sqrt((1 - abar_t / abar_next) (1 - abar_next) / (1 - abar_t)),
    x_next = sqrt(abar_next) x0_hat + sqrt(1 - abar_next - sigma^2) eps_hat + sigma z.
    """
    schedule, gens, device = _setup(shape, generators, device, schedule)
    pairs = ddim_timesteps(steps, schedule.num_timesteps)
    ac = schedule.alphas_cumprod
    x = per_sample_randn(shape, gens, device, dtype)  # b c l
    with Progress(len(pairs), "ddim sampling") if progress else _NoProgress() as bar:
        for i, (step, step_next) in enumerate(pairs):
            t = torch.full((shape[0],), step, device=device, dtype=torch.long)
            eps = _predict_eps(model, x, t, cond, guidance)
            x0 = schedule.predict_x0(x, t, eps)
            if clip:
                x0 = x0.clamp(-1.0, 1.0)
            if step_next < 0:
                x = x0
            else:
                a, a_next = ac[step].item(), ac[step_next].item()  # float64 scalars
                sigma = eta * ((1 - a / a_next) * (1 - a_next) / (1 - a)) ** 0.5
                c = max(1 - a_next - sigma**2, 0.0) ** 0.5
                x = a_next**0.5 * x0 + c * eps
                if sigma > 0:
                    x = x + sigma * per_sample_randn(shape, gens, device, dtype)
            bar.update(1)
            if callback is not None:
                callback(i, len(pairs), x)
    return x


def sample(
    model: Model,
    shape: Sequence[int],
    *,
    steps: int = 1000,
    eta: float = 1.0,
    schedule: NoiseSchedule | None = None,
    **kwargs,
) -> torch.Tensor:
    """The original's dispatch: steps == T -> ancestral DDPM (eta unused); steps < T -> DDIM."""
    schedule = schedule or NoiseSchedule()
    if steps == schedule.num_timesteps:
        return ddpm_sample(model, shape, schedule=schedule, **kwargs)
    return ddim_sample(model, shape, steps=steps, eta=eta, schedule=schedule, **kwargs)


def sample_long(
    model: Model,
    n_clips: int,
    shape: Sequence[int],
    *,
    first_cond: torch.Tensor | None = None,
    generators: Sequence[int | torch.Generator] | None = None,
    progress: bool = False,
    **kwargs,
) -> torch.Tensor:
    """Autoregressive long video: clip 1 with ``first_cond`` (None = the model's zeros condition),
    clip k > 1 conditioned on the generated clean latent of clip k - 1 (PVDM's 128-frame scheme).

    Each sample's generator continues across clips. Returns ``[n_clips, B, C, L]``; decode every
    clip on its own and concatenate the frames. ``kwargs`` go to ``sample`` (steps, eta, ...).
    """
    if n_clips < 1:
        raise ValueError(f"n_clips must be >= 1, got {n_clips}")
    gens = make_generators(generators) if generators is not None else None
    clips, cond = [], first_cond
    with Progress(n_clips, "long video clips") if progress else _NoProgress() as bar:
        for _ in range(n_clips):
            z = sample(model, shape, cond=cond, generators=gens, **kwargs)  # b c l
            clips.append(z)
            cond = z
            bar.update(1)
    return torch.stack(clips)


class _NoProgress:
    def update(self, n: int = 1, **_: object) -> None:
        pass

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass
