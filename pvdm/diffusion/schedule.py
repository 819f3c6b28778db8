"""Gaussian diffusion: PVDM's noise schedule, the forward process and the epsilon training loss.

Network-agnostic: ``model`` is any callable ``model(x_t, t, cond) -> eps`` on ``[B, C, L]`` tensors.

The schedule is the original's (LDM "linear"): T = 1000, betas = linspace(sqrt(0.0015), sqrt(0.0195),
T) ** 2, all derived buffers in float64 (the original rounds them to float32 buffers; rounding
at use gives the same values). The loss is the epsilon MSE: the original YAML says ``loss_type: l1``
but the value is never passed, so PVDM trains with the class default L2.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


class NoiseSchedule:
    """betas and the standard DDPM buffers, float64 on CPU; ``extract`` casts to the input's dtype."""

    def __init__(self, num_timesteps: int = 1000, linear_start: float = 0.0015, linear_end: float = 0.0195):
        if num_timesteps < 2:
            raise ValueError(f"num_timesteps must be >= 2, got {num_timesteps}")
        if not 0.0 < linear_start <= linear_end < 1.0:
            raise ValueError(f"need 0 < linear_start <= linear_end < 1, got {linear_start}, {linear_end}")
        f64 = torch.float64
        self.num_timesteps = num_timesteps
        self.betas = torch.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=f64) ** 2
        alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=f64), self.alphas_cumprod[:-1]])
        ac, ac_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        self.sqrt_alphas_cumprod = ac.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - ac).sqrt()
        self.log_one_minus_alphas_cumprod = (1.0 - ac).log()
        self.sqrt_recip_alphas_cumprod = (1.0 / ac).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / ac - 1.0).sqrt()
        self.snr = ac / (1.0 - ac)  # signal-to-noise ratio abar / (1 - abar)
        # Posterior q(x_{t-1} | x_t, x_0); its variance is 0 at t = 0, hence the clipped log.
        self.posterior_variance = self.betas * (1.0 - ac_prev) / (1.0 - ac)
        self.posterior_log_variance_clipped = self.posterior_variance.clamp(min=1e-20).log()
        self.posterior_mean_coef1 = self.betas * ac_prev.sqrt() / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac)

    @staticmethod
    def extract(buffer: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """buffer[t] as ``[B, 1, ..., 1]`` in x's dtype and device."""
        out = buffer[t.detach().long().cpu()].to(device=x.device, dtype=x.dtype)  # b
        return out.view(-1, *([1] * (x.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
        return self.extract(self.sqrt_alphas_cumprod, t, x0) * x0 + self.extract(
            self.sqrt_one_minus_alphas_cumprod, t, x0
        ) * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self.extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - self.extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        ) * eps

    def v_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022)."""
        return self.extract(self.sqrt_alphas_cumprod, t, x0) * noise - self.extract(
            self.sqrt_one_minus_alphas_cumprod, t, x0
        ) * x0

    def eps_and_x0(self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor,
                   prediction: str = "eps") -> tuple[torch.Tensor, torch.Tensor]:
        """A network output read as ``prediction`` -> (eps, x0). From v both come without dividing by
        sqrt(abar_t), which is ~0.03 at t = T - 1: an eps error there is a 30x larger x0 error."""
        if prediction == "eps":
            return out, self.predict_x0(x_t, t, out)
        if prediction == "v":
            a, s = self.extract(self.sqrt_alphas_cumprod, t, x_t), self.extract(self.sqrt_one_minus_alphas_cumprod, t, x_t)
            return a * out + s * x_t, a * x_t - s * out
        raise ValueError(f"prediction must be 'eps' or 'v', got {prediction!r}")

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = self.extract(self.posterior_mean_coef1, t, x_t) * x0 + self.extract(
            self.posterior_mean_coef2, t, x_t
        ) * x_t
        return mean, self.extract(self.posterior_log_variance_clipped, t, x_t)


def q_sample(
    x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, schedule: NoiseSchedule | None = None
) -> torch.Tensor:
    return (schedule or NoiseSchedule()).q_sample(x0, t, noise)


def training_loss(
    model: Model,
    x0: torch.Tensor,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    cond: torch.Tensor | None = None,
    loss_type: str = "l2",
    generator: torch.Generator | None = None,
    schedule: NoiseSchedule | None = None,
    reduction: str = "mean",
    prediction: str = "eps",
    min_snr_gamma: float | None = None,
) -> torch.Tensor:
    """||target - model(x_t, t, cond)||, t ~ U{0..T-1} per sample; the target is eps (the original) or
    v (``prediction="v"``, ``NoiseSchedule.v_target``).

    ``generator`` draws t and noise when they are not given (on x0's device). ``reduction="none"``
    returns the per-sample means ``[B]`` (the original: mean over (C, L), then over the batch).
    ``min_snr_gamma``: weight each sample by min(SNR_t, gamma) / SNR_t for eps (/ (SNR_t + 1) for v), the
    Min-SNR strategy (Hang et al. 2023); None = unweighted, the original.
    """
    schedule = schedule or NoiseSchedule()
    b = x0.shape[0]
    if t is None:
        t = torch.randint(0, schedule.num_timesteps, (b,), device=x0.device, generator=generator)
    if noise is None:
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {list(noise.shape)} != x0 shape {list(x0.shape)}")
    if prediction == "eps":
        target = noise
    elif prediction == "v":
        target = schedule.v_target(x0, t, noise)
    else:
        raise ValueError(f"prediction must be 'eps' or 'v', got {prediction!r}")
    out = model(schedule.q_sample(x0, t, noise), t, cond)
    if loss_type == "l2":
        loss = F.mse_loss(out, target, reduction="none")
    elif loss_type == "l1":
        loss = (out - target).abs()
    else:
        raise ValueError(f"loss_type must be 'l2' or 'l1', got {loss_type!r}")
    loss = loss.flatten(1).mean(dim=1)  # b
    if min_snr_gamma is not None:
        if min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be > 0, got {min_snr_gamma}")
        snr = schedule.extract(schedule.snr, t, loss.double())  # b; the weight in float64, then cast
        loss = loss * (snr.clamp(max=min_snr_gamma) / (snr if prediction == "eps" else snr + 1.0)).to(loss.dtype)
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
