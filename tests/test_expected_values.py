"""Expected-value slices: a few numbers from seeded tiny forward passes of each model and from a
seeded 5-step DDIM run, pinned (diffusers' habit), so any numerical change to a model or the sampler
is seen. The numbers were computed with the code before the architecture consolidation (commit
e7d92b3) and are unchanged by it. Tolerance 1e-5: CPU kernels (AVX2 vs AVX-512) differ far below it.
"""

from __future__ import annotations

import torch

from pvdm.diffusion import Sampler, sample
from pvdm.models.autoencoder import AutoencoderConfig, TriplaneAutoencoder
from pvdm.models.unet import TriplaneUNet, UNetConfig

ATOL = 1e-5
AE = dict(resolution=32, frames=8, patch_size=8, channels=32, depth=1, heads=2, dim_head=16, embed_dim=4,
          proj_depth=1, proj_heads=2, proj_dim_head=16, proj_mlp_dim=64)
L = 4 * 4 + 2 * 8 * 4  # xy plane 4x4, two 8x4 time planes


def expect(actual: torch.Tensor, values: list[float]) -> None:
    torch.testing.assert_close(actual, torch.tensor(values), atol=ATOL, rtol=0)


def unet() -> TriplaneUNet:
    torch.manual_seed(0)
    cfg = UNetConfig(model_channels=32, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[2],
                     num_heads=2, in_channels=4, latent_side=4, latent_frames=8, cond=True)
    model = TriplaneUNet(cfg).eval()
    with torch.no_grad():  # the output layer starts at zero (as the original): perturb every weight
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return model


def test_autoencoder_slice():
    torch.manual_seed(0)
    ae = TriplaneAutoencoder(AutoencoderConfig(**AE)).eval()
    x = torch.linspace(-1, 1, 3 * 8 * 32 * 32).reshape(1, 3, 8, 32, 32).sin()  # b c t h w
    with torch.no_grad():
        z = ae.encode(x)
        x_hat = ae.decode(z)
    assert z.shape == (1, 4, L)
    expect(z.flatten()[::7][:8], [0.528276, 0.534794, 0.545383, -0.848394, -0.851807, -0.851329, -0.851628, -0.528155])
    expect(x_hat.flatten()[::4099][:6], [0.035396, 0.045141, -0.052832, 0.058193, -0.091123, -0.037684])


def test_unet_slice():
    model = unet()
    xt = torch.randn(2, 4, L, generator=torch.Generator().manual_seed(2))
    cond = torch.randn(2, 4, L, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        eps = model(xt, torch.tensor([10, 700]), cond)
    expect(eps.flatten()[::13][:8], [-0.004248, 0.071674, -0.015278, -0.413114, 0.047666, -0.228723, -0.076911, 0.011823])


def test_ddim_five_steps_slice():
    model = unet()
    cond = torch.randn(2, 4, L, generator=torch.Generator().manual_seed(3))
    z = sample(model, (2, 4, L), Sampler("ddim", 5, 1.0), generators=[11, 12], cond=cond)
    expect(z.flatten()[::11][:8], [0.606428, 1.000000, -0.494162, -0.825287, -1.000000, 0.790793, -0.452455, 0.085982])
