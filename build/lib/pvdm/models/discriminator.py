"""PatchGAN discriminators of PVDM's autoencoder GAN stage: 2-D on frames, 3-D on clips.

pix2pix's N-layer PatchGAN with every block's output exposed (pix2pixHD ``getIntermFeat``) for the
feature-matching loss. Blocks ``model0..model{n_layers+1}`` and their ``.0`` (conv) / ``.1`` (norm)
indices reproduce the original's state-dict keys, so its ``discriminator_2d.*`` / ``discriminator_3d.*``
checkpoint entries load as they are. Parameter counts for the original config (ndf 64, 3 layers):
2-D 2,766,529 and 3-D 11,057,857.

Norm: the original uses SyncBatchNorm, which needs a process group in training; here plain
BatchNorm, converted to batch statistics over all ranks by the trainer under torchrun
(``pvdm.train.distributed.sync_batchnorm``; same keys, same numbers on one process).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class _PatchGAN(nn.Module):
    """Shared body; ``dims`` picks Conv2d/BatchNorm2d (frames) or Conv3d/BatchNorm3d (clips)."""

    def __init__(self, dims: int, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        self.dims = dims
        self.n_blocks = n_layers + 2
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        k, p = 4, 2  # padding ceil((k - 1) / 2) = 2: each block grows the map by one before striding

        def block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            return nn.Sequential(conv(c_in, c_out, k, stride, p), norm(c_out), nn.LeakyReLU(0.2))

        self.model0 = nn.Sequential(conv(in_channels, ndf, k, 2, p), nn.LeakyReLU(0.2))
        c = ndf
        for n in range(1, n_layers):
            setattr(self, f"model{n}", block(c, min(2 * c, 512), stride=2))
            c = min(2 * c, 512)
        setattr(self, f"model{n_layers}", block(c, min(2 * c, 512), stride=1))
        c = min(2 * c, 512)
        setattr(self, f"model{n_layers + 1}", nn.Sequential(conv(c, 1, k, 1, p)))

        # The original's init: conv weights N(0, 0.02), norm weights N(1, 0.02), norm biases 0;
        # conv biases keep PyTorch's default init.
        for m in self.modules():
            if isinstance(m, conv):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of every block; the last one is the patch logits."""
        if x.ndim != self.dims + 2:
            layout = "[B, C, H, W]" if self.dims == 2 else "[B, C, T, H, W]"
            raise ValueError(f"{type(self).__name__} expects {layout}, got shape {tuple(x.shape)}")
        feats = []
        for n in range(self.n_blocks):
            x = getattr(self, f"model{n}")(x)
            feats.append(x)
        return feats


class NLayerDiscriminator(_PatchGAN):
    """2-D PatchGAN on frames ``[B, C, H, W]``; 256² input -> logits ``[B, 1, 35, 35]``."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__(2, in_channels, ndf, n_layers)


class NLayerDiscriminator3D(_PatchGAN):
    """3-D PatchGAN on clips ``[B, C, T, H, W]``; 16×256² input -> logits ``[B, 1, 5, 35, 35]``."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__(3, in_channels, ndf, n_layers)
