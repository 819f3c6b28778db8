"""Autoencoder losses: LPIPS perceptual distance (pvdm.losses.lpips) and the GAN objective of PVDM's
first stage (pvdm.losses.gan)."""
