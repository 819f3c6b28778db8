"""Autoencoder losses: LPIPS perceptual distance and the GAN objective of PVDM's first stage."""

from pvdm.losses.gan import (
    AutoencoderLoss,
    adaptive_gan_weight,
    feature_matching_loss,
    hinge_d_loss,
    hinge_g_loss,
    select_frames,
)
from pvdm.losses.lpips import LPIPS, convert_lpips_weights, lpips_weights_path

__all__ = [
    "LPIPS",
    "AutoencoderLoss",
    "adaptive_gan_weight",
    "convert_lpips_weights",
    "feature_matching_loss",
    "hinge_d_loss",
    "hinge_g_loss",
    "lpips_weights_path",
    "select_frames",
]
