"""Samplers: DDPM ancestral, DDIM with eta (PVDM's time pairs) and DPM-Solver++(2M) in one loop;
long-video chaining.

A sampler is a named value, ``Sampler(name, steps, eta, spacing, clip)`` (the config's
``sampling.sampler``): ``ddpm`` walks all T steps with the ancestral update, ``ddim`` walks PVDM's
``steps`` time pairs with the DDIM update, ``dpmpp2m`` / ``dpmpp2m_sde`` walk ``steps`` time steps
spaced uniformly in t or in log-SNR with the second-order multistep DPM-Solver++ update (Lu et al.
2022, arXiv:2211.01095; its ODE form and the SDE form of its appendix) in data prediction. ``sample``
is the one loop they share: per step one network evaluation, then ``_UPDATES[name]`` maps (x, x0_hat,
eps_hat) to the next x, with a per-run ``memory`` dict for multistep solvers (the previous x0_hat).
The paper's numbers use DDIM with 400 steps and eta = 1 (docs/original-pvdm.md#sampling). By default
every sampler clips the predicted x0 to [-1, 1] (the latents are tanh-bounded).

Every random draw of sample b comes from its own generator ``generators[b]`` (an int seed or a
``torch.Generator``), so a sample depends on its seed only, not on the batch it is drawn in.
Integer seeds make CPU generators: the same seed gives the same noise on any device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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


SPACINGS = ("time", "logsnr")


def dpm_timesteps(steps: int, spacing: str, schedule: NoiseSchedule) -> list[tuple[int, int]]:
    """DPM-Solver's evaluation times t_0 > ... > t_{steps-1} as (t, t_next) pairs; the last step goes to
    the clean data (t_next = -1). ``time``: round(linspace(T-1, 0, steps+1)) without the final 0, as
    diffusers' ``linspace`` spacing. ``logsnr``: the same in lambda = log(alpha / sigma) between
    lambda(T-1) and lambda(0), each mapped to the nearest integer time step (the U-Net was trained on
    integer t); an error when two of them land on one time step."""
    n = schedule.num_timesteps
    if not 2 <= steps <= n:
        raise ValueError(f"sampler steps must be in [2, {n}] for a multistep DPM-Solver, got {steps}")
    if spacing == "time":
        times = torch.linspace(n - 1, 0, steps + 1, dtype=torch.float64).round().long().tolist()[:-1]
    elif spacing == "logsnr":
        lam = 0.5 * (schedule.alphas_cumprod / (1 - schedule.alphas_cumprod)).log()  # decreasing in t
        targets = torch.linspace(lam[-1].item(), lam[0].item(), steps + 1, dtype=torch.float64)[:-1]
        times = [int((lam - v).abs().argmin()) for v in targets.tolist()]
    else:
        raise ValueError(f"sampler spacing must be one of {list(SPACINGS)}, got {spacing!r}")
    for i in range(1, len(times)):
        if times[i] >= times[i - 1]:
            raise ValueError(f"sampler spacing {spacing} with {steps} steps puts steps {i - 1} and {i} on time step "
                             f"{times[i - 1]} of {n}: use fewer steps or spacing time")
    return list(zip(times, [*times[1:], -1], strict=True))


@dataclass(frozen=True)
class Sampler:
    """A named sampler: ``ddpm`` (ancestral, all T steps), ``ddim`` (``steps`` pairs, ``eta``), ``dpmpp2m``
    / ``dpmpp2m_sde`` (``steps`` evaluations at ``spacing``; eta unused). ``clip``: clip x0_hat to [-1, 1]."""

    name: str = "ddim"
    steps: int = 400
    eta: float = 1.0
    spacing: str = "time"
    clip: bool = True

    def __post_init__(self) -> None:
        if self.name not in _UPDATES:
            raise ValueError(f"unknown sampler {self.name!r}; choose one of {sorted(_UPDATES)}")
        if self.eta < 0:
            raise ValueError(f"sampler eta must be >= 0, got {self.eta}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"sampler spacing must be one of {list(SPACINGS)}, got {self.spacing!r}")

    @classmethod
    def from_config(cls, d: Mapping[str, Any], num_timesteps: int = 1000) -> Sampler:
        """The config's ``sampling.sampler``, checked against the schedule's T (steps, spacing) at once."""
        sampler = cls(str(d["name"]), int(d["steps"]), float(d.get("eta", 1.0)), str(d.get("spacing", "time")),
                      bool(d.get("clip", True)))
        sampler.timesteps(num_timesteps)
        return sampler

    @property
    def multistep(self) -> bool:
        return self.name.startswith("dpmpp")

    def to_dict(self) -> dict[str, Any]:
        """The sampler card. DDIM/DDPM cards keep their old keys (clip only when off): unchanged settings,
        unchanged cards, no reruns."""
        d: dict[str, Any] = {"name": self.name, "steps": self.steps}
        if self.multistep:
            d.update(spacing=self.spacing, clip=self.clip, order=2)
        else:
            d["eta"] = self.eta
            if not self.clip:
                d["clip"] = False
        return d

    @property
    def label(self) -> str:
        """Short name for folders and protocol cards: ``ddim400_eta1``, ``ddpm1000``, ``dpmpp2m20_time``."""
        if self.name == "ddim":
            label = f"ddim{self.steps}_eta{self.eta:g}"
        elif self.name == "ddpm":
            label = f"ddpm{self.steps}"
        else:
            label = f"{self.name}{self.steps}_{self.spacing}"
        return label if self.clip else f"{label}_noclip"

    @property
    def evaluations(self) -> int:
        """Network evaluations per clip (without guidance): one per step."""
        return self.steps

    def timesteps(self, num_timesteps: int = 1000, schedule: NoiseSchedule | None = None) -> list[tuple[int, int]]:
        """The (t, t_next) pairs the loop walks; t_next = -1 marks the last step."""
        if self.name == "ddim":
            return ddim_timesteps(self.steps, num_timesteps)
        if self.multistep:
            return dpm_timesteps(self.steps, self.spacing, schedule or NoiseSchedule(num_timesteps))
        if self.steps != num_timesteps:
            raise ValueError(f"the ddpm sampler walks all {num_timesteps} steps; got steps={self.steps}")
        return [(t, t - 1) for t in reversed(range(num_timesteps))]


def _predict(
    model: Model, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, guidance: float
) -> torch.Tensor:
    out = model(x, t, cond)
    if guidance and cond is not None:
        # Classifier-free guidance against the all-zeros ("dropped") condition, as the original's DDIM
        # (a linear combination: the same in eps and in v).
        out = (1.0 + guidance) * out - guidance * model(x, t, torch.zeros_like(cond))
    return out


Noise = Callable[[], torch.Tensor]


def _ddpm_update(
    schedule: NoiseSchedule, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor,
    t: torch.Tensor, step: int, step_next: int, sampler: Sampler, noise: Noise, memory: dict,
) -> torch.Tensor:
    """x_{t-1} ~ q(x_{t-1} | x_t, x0_hat); the mean (no noise) at t = 0."""
    mean, log_var = schedule.q_posterior(x0, x, t)
    return mean + (0.5 * log_var).exp() * noise() if step > 0 else mean


def _ddim_update(
    schedule: NoiseSchedule, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor,
    t: torch.Tensor, step: int, step_next: int, sampler: Sampler, noise: Noise, memory: dict,
) -> torch.Tensor:
    """sigma = eta * sqrt((1 - abar_t / abar_next) (1 - abar_next) / (1 - abar_t)),
    x_next = sqrt(abar_next) x0_hat + sqrt(1 - abar_next - sigma^2) eps_hat + sigma z; x0_hat at the end."""
    if step_next < 0:
        return x0
    ac = schedule.alphas_cumprod
    a, a_next = ac[step].item(), ac[step_next].item()  # float64 scalars
    sigma = sampler.eta * ((1 - a / a_next) * (1 - a_next) / (1 - a)) ** 0.5
    c = max(1 - a_next - sigma**2, 0.0) ** 0.5
    x = a_next**0.5 * x0 + c * eps
    return x + sigma * noise() if sigma > 0 else x


def _dpmpp2m_update(
    schedule: NoiseSchedule, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor,
    t: torch.Tensor, step: int, step_next: int, sampler: Sampler, noise: Noise, memory: dict,
) -> torch.Tensor:
    """DPM-Solver++(2M) from s = step to t = step_next, h = lambda_t - lambda_s, lambda = log(alpha / sigma):
    D = x0_hat + (h / 2 h_prev) (x0_hat - x0_hat_prev) (first order, D = x0_hat, at the first step),
    ODE: x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^-h) D;
    SDE: x_t = (sigma_t / sigma_s) e^-h x_s + alpha_t (1 - e^-2h) D + sigma_t sqrt(1 - e^-2h) z.
    The last step, to sigma = 0, returns x0_hat (first order, as diffusers' ``final_sigmas_type="zero"``)."""
    ac = schedule.alphas_cumprod
    a_s = ac[step].item()  # float64 scalars
    lam_s = 0.5 * math.log(a_s / (1 - a_s))
    prev, memory["prev"] = memory.get("prev"), (lam_s, x0)
    if step_next < 0:
        return x0
    a_t = ac[step_next].item()
    lam_t = 0.5 * math.log(a_t / (1 - a_t))
    h = lam_t - lam_s
    d = x0 if prev is None else x0 + (0.5 * h / (lam_s - prev[0])) * (x0 - prev[1])
    ratio = ((1 - a_t) / (1 - a_s)) ** 0.5  # sigma_t / sigma_s
    if sampler.name == "dpmpp2m":
        return ratio * x + a_t**0.5 * -math.expm1(-h) * d
    return ratio * math.exp(-h) * x + a_t**0.5 * -math.expm1(-2 * h) * d + (
        (1 - a_t) ** 0.5 * (-math.expm1(-2 * h)) ** 0.5) * noise()


_UPDATES = {"ddpm": _ddpm_update, "ddim": _ddim_update, "dpmpp2m": _dpmpp2m_update, "dpmpp2m_sde": _dpmpp2m_update}

# The sampler of the PVDM paper's FVD numbers (its DDIM at 400 steps, eta 1): the reference others are measured against.
PAPER_SAMPLER = Sampler("ddim", 400, 1.0)


@torch.no_grad()
def sample(
    model: Model,
    shape: Sequence[int],
    sampler: Sampler,
    *,
    cond: torch.Tensor | None = None,
    generators: Sequence[int | torch.Generator] | None = None,
    schedule: NoiseSchedule | None = None,
    clip: bool | None = None,
    guidance: float = 0.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    callback: Callback | None = None,
    prediction: str = "eps",
) -> torch.Tensor:
    """Draw ``shape`` = ``[B, C, L]`` latents with ``sampler``: one loop for every sampler.
    ``prediction`` says what the model outputs (eps or v; a U-Net's ``cfg.prediction``); ``clip``
    overrides ``sampler.clip``."""
    if len(shape) < 2:
        raise ValueError(f"shape must be [B, ...], got {list(shape)}")
    schedule = schedule or NoiseSchedule()
    pairs = sampler.timesteps(schedule.num_timesteps, schedule)
    clip = sampler.clip if clip is None else clip
    memory: dict = {}  # per-run state of multistep solvers
    gens = make_generators(generators) if generators is not None else None
    device = torch.device(device or "cpu")
    update = _UPDATES[sampler.name]

    def noise() -> torch.Tensor:
        return per_sample_randn(shape, gens, device, dtype)

    x = noise()  # b c l
    with Progress(len(pairs), f"{sampler.name} sampling") if progress else _NoProgress() as bar:
        for i, (step, step_next) in enumerate(pairs):
            t = torch.full((shape[0],), step, device=device, dtype=torch.long)
            eps, x0 = schedule.eps_and_x0(x, t, _predict(model, x, t, cond, guidance), prediction)
            if clip:
                x0 = x0.clamp(-1.0, 1.0)
            x = update(schedule, x, x0, eps, t, step, step_next, sampler, noise, memory)
            bar.update(1)
            if callback is not None:
                callback(i, len(pairs), x)
    return x


def ddpm_sample(model: Model, shape: Sequence[int], **kwargs: Any) -> torch.Tensor:
    """Ancestral sampling over all T steps (``sample`` with ``Sampler("ddpm", T)``)."""
    schedule = kwargs.get("schedule") or NoiseSchedule()
    return sample(model, shape, Sampler("ddpm", schedule.num_timesteps), **kwargs)


def ddim_sample(model: Model, shape: Sequence[int], *, steps: int = 100, eta: float = 1.0, **kwargs: Any) -> torch.Tensor:
    """DDIM (Song et al.) on PVDM's time pairs (``sample`` with ``Sampler("ddim", steps, eta)``)."""
    return sample(model, shape, Sampler("ddim", steps, eta), **kwargs)


def sample_long(
    model: Model,
    n_clips: int,
    shape: Sequence[int],
    sampler: Sampler,
    *,
    first_cond: torch.Tensor | None = None,
    generators: Sequence[int | torch.Generator] | None = None,
    progress: bool = False,
    **kwargs,
) -> torch.Tensor:
    """Autoregressive long video: clip 1 with ``first_cond`` (None = the model's zeros condition),
    clip k > 1 conditioned on the generated clean latent of clip k - 1 (PVDM's 128-frame scheme).

    Each sample's generator continues across clips. Returns ``[n_clips, B, C, L]``; decode every
    clip on its own and concatenate the frames. ``kwargs`` go to ``sample`` (device, guidance, ...).
    """
    if n_clips < 1:
        raise ValueError(f"n_clips must be >= 1, got {n_clips}")
    gens = make_generators(generators) if generators is not None else None
    clips, cond = [], first_cond
    with Progress(n_clips, "long video clips") if progress else _NoProgress() as bar:
        for _ in range(n_clips):
            z = sample(model, shape, sampler, cond=cond, generators=gens, **kwargs)  # b c l
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
