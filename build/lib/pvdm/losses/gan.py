"""Autoencoder training losses: L1 + LPIPS on one random frame per clip + hinge GAN + feature matching.

Follows PVDM's ``LPIPSWithDiscriminator`` (weights 4 / 4 / 1 / 4, a 2-D discriminator on the
selected frames and a 3-D one on whole clips, hinge loss, L1 feature matching on every
discriminator block but the last). Differences, all opt-in or harmless:

* the GAN terms are skipped (not multiplied by 0) while the GAN is off;
* the generator step runs the discriminators on real data under ``no_grad`` (those features are
  only used detached; same values, less memory);
* the random frame comes from a passed ``torch.Generator`` or the global RNG, on any device;
* ``adaptive_gan_weight=True`` adds the taming/LDM adaptive weight (off in the original);
* the D loss is not multiplied by ``gan_weight`` (the original does, with its value 1.0), so the
  generator-side GAN weight can change without changing the discriminator's step size.

The discriminators are attributes (``discriminator_2d``, ``discriminator_3d``) named as in the
original's ``loss_last.pth``; optimise their parameters with a separate optimiser. The generator
step backpropagates into them too (as in the original): zero their grads before the D step.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pvdm.losses.lpips import LPIPS
from pvdm.models.discriminator import NLayerDiscriminator, NLayerDiscriminator3D


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (E[relu(1 - D(real))] + E[relu(1 + D(fake))])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """-E[D(fake)]."""
    return -logits_fake.mean()


def feature_matching_loss(feats_fake: list[torch.Tensor], feats_real: list[torch.Tensor]) -> torch.Tensor:
    """Sum over the intermediate discriminator outputs (all but the logits) of L1(fake, real.detach())."""
    if len(feats_fake) != len(feats_real) or len(feats_fake) < 2:
        raise ValueError(
            f"need two equal lists of >= 2 features, got {len(feats_fake)} and {len(feats_real)}"
        )
    return sum(F.l1_loss(f, r.detach()) for f, r in zip(feats_fake[:-1], feats_real[:-1], strict=True))


def select_frames(
    x: torch.Tensor, x_hat: torch.Tensor, generator: torch.Generator | None = None,
    index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One uniformly random frame per clip: ``[B, C, T, H, W]`` x2 -> ``[B, C, H, W]`` x2 and the indices ``[B]``.

    ``index`` gives the frames (a rank's share of draws made for the global batch); otherwise they
    are drawn on ``generator``'s device (so a CPU generator gives the same frames for CPU and GPU
    inputs), or from the global RNG of the input's device when no generator is given.
    """
    b, _, t = x.shape[:3]
    if index is not None:
        idx = index.to(x.device)
    elif generator is not None:
        idx = torch.randint(0, t, (b,), generator=generator, device=generator.device).to(x.device)
    else:
        idx = torch.randint(0, t, (b,), device=x.device)
    rows = torch.arange(b, device=x.device)
    return x[rows, :, idx], x_hat[rows, :, idx], idx  # b c h w


def adaptive_gan_weight(
    rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """taming/LDM: ||d rec / d w|| / (||d gan / d w|| + 1e-4) at the decoder's last weight w, clamped, detached.

    Balances the two gradients at the output layer so the GAN term neither vanishes nor dominates.
    """
    if not torch.is_grad_enabled() or not last_layer.requires_grad:
        raise RuntimeError(
            "adaptive_gan_weight needs autograd: call it with grad enabled on a trainable last layer"
        )
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (gan_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


class AutoencoderLoss(nn.Module):
    """PVDM's autoencoder objective; inputs are clips ``[B, 3, T, H, W]`` in [-1, 1].

    ``generator_loss``: total = l1_weight * L1 [+ mse_weight * MSE] + lpips_weight * LPIPS(random frame)
    + [gan_active] (w_gan * G_hinge + fm_weight * FM), w_gan = gan_weight (times the adaptive
    weight if enabled). ``discriminator_loss``: hinge on D2d(frames) + hinge on D3d(clips).
    Both return a dict of scalars: ``total`` carries the graph, the other terms are detached, unweighted.
    """

    def __init__(
        self,
        l1_weight: float = 4.0,
        mse_weight: float = 0.0,
        lpips_weight: float = 4.0,
        gan_weight: float = 1.0,
        fm_weight: float = 4.0,
        adaptive_gan_weight: bool = False,
        lpips_net: str = "vgg",
        disc_ndf: int | None = 64,
        disc_layers: int = 3,
    ):
        """``disc_ndf=None`` builds no discriminators (stage 1 trains without a GAN term)."""
        super().__init__()
        self.l1_weight = l1_weight
        # Not in the original (0 by default). On sparse data (Moving MNIST is mostly black) the L1
        # optimum of an uninformed model is the per-pixel median, black; an MSE term pulls towards
        # the mean and gets a short CPU run past that plateau.
        self.mse_weight = mse_weight
        self.lpips_weight = lpips_weight
        self.gan_weight = gan_weight
        self.fm_weight = fm_weight
        self.adaptive_gan_weight = adaptive_gan_weight
        self.lpips = LPIPS(lpips_net) if lpips_weight > 0 else None
        self.discriminator_2d = self.discriminator_3d = None
        if disc_ndf is not None:
            self.discriminator_2d = NLayerDiscriminator(3, disc_ndf, disc_layers)
            self.discriminator_3d = NLayerDiscriminator3D(3, disc_ndf, disc_layers)

    def generator_loss(
        self,
        x: torch.Tensor,
        x_hat: torch.Tensor,
        gan_active: bool = False,
        last_layer: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        frame_index: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss for the autoencoder step. ``last_layer``: the decoder's output weight (adaptive weight only)."""
        _check_clips(x, x_hat)
        zero = x_hat.new_zeros(())
        l1 = (x - x_hat).abs().mean()
        x2d, x_hat2d, _ = select_frames(x, x_hat, generator, frame_index)  # b c h w
        p = self.lpips(x2d, x_hat2d).mean() if self.lpips is not None else zero
        mse = (x - x_hat).pow(2).mean() if self.mse_weight else zero
        rec = self.l1_weight * l1 + self.mse_weight * mse + self.lpips_weight * p
        g, fm, w_gan = zero, zero, zero
        if gan_active:
            if self.discriminator_2d is None:
                raise ValueError("gan_active=True needs discriminators (disc_ndf is None)")
            with torch.no_grad():  # real features are only used detached
                real_2d = self.discriminator_2d(x2d)
                real_3d = self.discriminator_3d(x)
            fake_2d = self.discriminator_2d(x_hat2d)
            fake_3d = self.discriminator_3d(x_hat)
            g = hinge_g_loss(fake_2d[-1]) + hinge_g_loss(fake_3d[-1])
            fm = feature_matching_loss(fake_2d, real_2d) + feature_matching_loss(fake_3d, real_3d)
            w_gan = x_hat.new_tensor(self.gan_weight)
            if self.adaptive_gan_weight:
                if last_layer is None:
                    raise ValueError(
                        "adaptive_gan_weight=True needs last_layer (the decoder's output weight)"
                    )
                w_gan = w_gan * adaptive_gan_weight(rec, g, last_layer)
        total = rec + w_gan * g + self.fm_weight * fm
        return {
            "total": total,
            "l1": l1.detach(),
            "mse": mse.detach(),
            "lpips": p.detach(),
            "gan": g.detach(),
            "fm": fm.detach(),
            "gan_weight": w_gan.detach(),
        }

    def discriminator_loss(
        self, x: torch.Tensor, x_hat: torch.Tensor, generator: torch.Generator | None = None,
        frame_index: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss for the discriminator step; ``x_hat`` is detached here."""
        _check_clips(x, x_hat)
        x_hat = x_hat.detach()
        x2d, x_hat2d, _ = select_frames(x, x_hat, generator, frame_index)  # b c h w
        # Separate real and fake passes, as the original: BatchNorm sees each batch on its own.
        real_2d = self.discriminator_2d(x2d)[-1]
        fake_2d = self.discriminator_2d(x_hat2d)[-1]
        real_3d = self.discriminator_3d(x)[-1]
        fake_3d = self.discriminator_3d(x_hat)[-1]
        d2d = hinge_d_loss(real_2d, fake_2d)
        d3d = hinge_d_loss(real_3d, fake_3d)
        return {
            "total": d2d + d3d,
            "hinge_2d": d2d.detach(),
            "hinge_3d": d3d.detach(),
            "logits_real_2d": real_2d.detach().mean(),
            "logits_fake_2d": fake_2d.detach().mean(),
            "logits_real_3d": real_3d.detach().mean(),
            "logits_fake_3d": fake_3d.detach().mean(),
        }


def _check_clips(x: torch.Tensor, x_hat: torch.Tensor) -> None:
    if x.ndim != 5 or x.shape[1] != 3 or x.shape != x_hat.shape:
        raise ValueError(
            f"expected two [B, 3, T, H, W] clips of the same shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}"
        )
