"""Latent diffusion process, independent of the network (``model`` is a callable argument)."""

from pvdm.diffusion.samplers import (
    Sampler,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    dpm_timesteps,
    make_generators,
    per_sample_randn,
    sample,
    sample_long,
)
from pvdm.diffusion.schedule import NoiseSchedule, q_sample, training_loss

__all__ = [
    "NoiseSchedule",
    "Sampler",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "dpm_timesteps",
    "make_generators",
    "per_sample_randn",
    "q_sample",
    "sample",
    "sample_long",
    "training_loss",
]
