"""TriplaneUNet: config validation, the original's key layout and parameter counts, the function
(against a plain per-plane re-statement of the original's forward), training signal, checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pvdm.diffusion import training_loss
from pvdm.models.unet import AttentionBlock, ResBlock, TriplaneUNet, UNetConfig

REF = json.loads((Path(__file__).parent / "data" / "pvdm_unet_keys.json").read_text())

# A tiny model: 2 levels, attention at both, plane sizes S=4, T=8 (L = 16 + 32 + 32 = 80).
TINY = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2),
            num_heads=2, latent_side=4, latent_frames=8)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> TriplaneUNet:
    torch.manual_seed(0)
    model = TriplaneUNet(UNetConfig(**{**TINY, **overrides}))
    # Zero-initialised output layers make eps == 0 and hide bugs: give every weight a value.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return model


# ---------------------------------------------------------------------------- config


def test_default_config_is_the_small_mnist_model():
    cfg = UNetConfig()
    assert (cfg.in_channels, cfg.latent_side, cfg.latent_frames, cfg.latent_length) == (4, 8, 16, 320)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    assert json.loads(json.dumps(cfg.to_dict()))["channel_mult"] == list(cfg.channel_mult)


@pytest.mark.parametrize(
    "bad, key",
    [
        ({"modelchannels": 64}, "modelchannels"),
        ({"model_channels": "64"}, "model_channels"),
        ({"model_channels": 64.0}, "model_channels"),
        ({"cond": 1}, "cond"),
        ({"channel_mult": [1, "2"]}, "channel_mult"),
        ({"dropout": "0"}, "dropout"),
        ({"model_channels": 48}, "model_channels"),  # not a multiple of the 32 GroupNorm groups
        ({"num_heads": 3}, "num_heads"),
        ({"latent_side": 6}, "latent_side"),  # 6 is not divisible by 2**2 (two down blocks)
        ({"latent_frames": 10}, "latent_frames"),
    ],
)
def test_from_dict_rejects_bad_keys_and_values(bad, key):
    with pytest.raises(ValueError, match=key):
        UNetConfig.from_dict(bad)


# ---------------------------------------------------------------------------- original layout


@pytest.mark.parametrize("cond", [True, False])
def test_paper_preset_matches_original_keys_shapes_and_counts(cond):
    with torch.device("meta"):
        model = TriplaneUNet(UNetConfig.paper(cond=cond))
    ours = [("diffusion_model." + k, list(v.shape)) for k, v in model.state_dict().items()]
    ref = [(e["key"], e["shape"]) for e in REF["diffusion"]["keys"]]
    if not cond:
        variant = REF["diffusion"]["unconditional_variant"]
        assert variant["missing_vs_conditional"] == ["diffusion_model.zeros"]
        (change,) = variant["shape_changes"]
        ref = [(k, change["unconditional"] if k == change["key"] else s) for k, s in ref if k != "diffusion_model.zeros"]
    assert ours == ref  # same keys, same order, same shapes
    counts = REF["param_counts"]["conditional" if cond else "unconditional"]
    assert sum(p.numel() for p in model.parameters()) == counts["total"]
    assert counts["total"] == (528_273_412 if cond else 528_264_196)
    for name, n in counts["children"].items():
        assert sum(p.numel() for p in getattr(model, name).parameters()) == n, name
    if cond:
        for name in ("input_blocks", "output_blocks", "input_attns", "output_attns"):
            got = [sum(p.numel() for p in m.parameters()) for m in getattr(model, name)]
            assert got == counts[name], name


# ---------------------------------------------------------------------------- function


def legacy_attention(block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """ADM's AttentionBlock + QKVAttentionLegacy written out with einsum (independent of sdpa)."""
    n, c, *spatial = x.shape
    x = x.reshape(n, c, -1)
    qkv = F.conv1d(block.norm(x), block.qkv.weight, block.qkv.bias)  # n 3c l
    heads = block.num_heads
    d = c // heads
    q, k, v = qkv.reshape(n * heads, 3 * d, -1).split(d, dim=1)
    scale = 1 / math.sqrt(math.sqrt(d))
    w = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    a = torch.einsum("bts,bcs->bct", w, v).reshape(n, c, -1)
    return (x + F.conv1d(a, block.proj_out.weight, block.proj_out.bias)).reshape(n, c, *spatial)


def reference_forward(model: TriplaneUNet, x, t, cond):
    """The original's loop: each plane through each block separately, then joint 1-D attention."""
    from pvdm.models.unet import timestep_embedding

    cfg = model.cfg
    s, T = cfg.latent_side, cfg.latent_frames
    emb = model.time_embed(timestep_embedding(t, cfg.model_channels))
    h = torch.cat([x, cond if cond is not None else torch.zeros_like(x)], dim=1) if cfg.cond else x
    b, c = h.shape[:2]
    planes = [h[:, :, : s * s].reshape(b, c, s, s), h[:, :, s * s : s * s + T * s].reshape(b, c, T, s),
              h[:, :, s * s + T * s :].reshape(b, c, T, s)]

    def run(block, p):
        for layer in block:
            p = layer(p, emb) if isinstance(layer, ResBlock) else (
                legacy_attention(layer, p) if isinstance(layer, AttentionBlock) else layer(p))
        return p

    def joint(attn, planes):
        if isinstance(attn, torch.nn.Identity):
            return planes
        shapes = [p.shape for p in planes]
        out = legacy_attention(attn, torch.cat([p.flatten(2) for p in planes], dim=-1))
        sizes = [sh[2] * sh[3] for sh in shapes]
        return [o.reshape(sh) for o, sh in zip(out.split(sizes, dim=-1), shapes, strict=True)]

    skips = []
    for block, attn in zip(model.input_blocks, model.input_attns, strict=True):
        planes = joint(attn, [run(block, p) for p in planes])
        skips.append(planes)
    planes = joint(model.mid_attn, [run(model.middle_block, p) for p in planes])
    for block, attn in zip(model.output_blocks, model.output_attns, strict=True):
        skip = skips.pop()
        planes = joint(attn, [run(block, torch.cat([p, q], dim=1)) for p, q in zip(planes, skip, strict=True)])
    return torch.cat([model.out(p).flatten(2) for p in planes], dim=-1)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"resblock_updown": False, "use_scale_shift_norm": False},
        {"latent_side": 6, "latent_frames": 10},  # not powers of two (divisible by the one downsampling)
        {"latent_side": 8, "latent_frames": 4, "cond": False, "num_head_channels": 16},  # T < S as in the paper
    ],
)
def test_forward_equals_per_plane_reference(overrides):
    model = tiny(**overrides).eval()
    cfg = model.cfg
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, cfg.latent_length, generator=g)
    cond = torch.randn(3, 4, cfg.latent_length, generator=g) if cfg.cond else None
    t = torch.tensor([0, 17, 999])
    with torch.no_grad():
        eps = model(x, t, cond)
        assert eps.shape == x.shape
        assert eps.abs().mean() > 1e-3
        torch.testing.assert_close(eps, reference_forward(model, x, t, cond), atol=1e-5, rtol=1e-4)
        # Float timesteps are accepted and agree with the integer ones.
        torch.testing.assert_close(model(x, t.float(), cond), eps)
        if cfg.cond:  # no condition = the zeros condition (the original's dropped condition)
            torch.testing.assert_close(model(x, t), model(x, t, torch.zeros_like(x)))


def test_planes_interact_through_joint_attention_only_in_the_right_layout():
    model = tiny().eval()
    x = torch.randn(1, 4, 80)
    t = torch.tensor([500])
    with torch.no_grad():
        base = model(x, t)
        x2 = x.clone()
        x2[:, :, 20] += 1.0  # a yt token
        out = model(x2, t)
    # Joint attention spreads the change to the other planes (xy: 0..15, xt: 48..79).
    assert (out - base)[:, :, :16].abs().max() > 1e-4
    assert (out - base)[:, :, 48:].abs().max() > 1e-4


def test_position_embedding_is_optional_wired_and_learned():
    plain, embedded = tiny(), tiny(position_embedding=True)
    extra = set(embedded.state_dict()) - set(plain.state_dict())
    assert extra == {"pos_xy", "pos_tp"}  # off: exactly the original's keys
    assert embedded.pos_xy.shape == (1, 32, 4, 4) and embedded.pos_tp.shape == (2, 32, 8, 4)
    # With the embeddings zeroed the function is the plain model's (same other weights).
    embedded.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        embedded.pos_xy.zero_()
        embedded.pos_tp.zero_()
    x, c, t = torch.randn(3, 4, 80), torch.randn(3, 4, 80), torch.tensor([1, 500, 999])
    with torch.no_grad():
        torch.testing.assert_close(embedded(x, t, c), plain(x, t, c))
        # yt and xt get their own embedding: a yt-only offset changes the output, and batch rows
        # stay independent (the [2B] stacking of yt | xt is matched row for row).
        embedded.pos_tp[0].normal_()
        moved = embedded(x, t, c)
        assert (moved - plain(x, t, c)).abs().max() > 1e-3
        single = torch.cat([embedded(x[i : i + 1], t[i : i + 1], c[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(moved, single, atol=1e-5, rtol=1e-4)
    loss = training_loss(embedded, x, t, torch.randn(3, 4, 80), cond=c)
    loss.backward()
    assert embedded.pos_xy.grad.abs().sum() > 0 and embedded.pos_tp.grad.abs().sum() > 0


def test_bad_shapes_raise_clear_errors():
    model = tiny()
    t = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"x_t must have shape \[B, 4, 80\]"):
        model(torch.randn(2, 4, 81), t)
    with pytest.raises(ValueError, match="cond must have shape"):
        model(torch.randn(2, 4, 80), t, torch.randn(1, 4, 80))
    with pytest.raises(ValueError, match="t must have shape"):
        model(torch.randn(2, 4, 80), torch.zeros(3))
    with pytest.raises(ValueError, match="cond=False"):
        tiny(cond=False)(torch.randn(2, 4, 80), t, torch.randn(2, 4, 80))


def test_batch_elements_are_independent():
    model = tiny().eval()
    x, c = torch.randn(4, 4, 80), torch.randn(4, 4, 80)
    t = torch.tensor([1, 200, 500, 999])
    with torch.no_grad():
        full = model(x, t, c)
        single = torch.cat([model(x[i : i + 1], t[i : i + 1], c[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(full, single, atol=1e-5, rtol=1e-4)


def test_a_few_adam_steps_lower_the_diffusion_loss():
    torch.manual_seed(0)
    model = TriplaneUNet(UNetConfig(**TINY))
    g = torch.Generator().manual_seed(0)
    # Structured data: a smooth pattern per sample, so there is something to learn.
    x0 = torch.tanh(torch.randn(8, 4, 1, generator=g) * torch.linspace(-2, 2, 80))
    t = torch.randint(0, 1000, (8,), generator=g)
    noise = torch.randn(8, 4, 80, generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss = training_loss(model, x0, t, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(noise.pow(2).mean().item(), rel=1e-5)  # zero-init output: eps = 0
    assert losses[-1] < 0.5 * losses[0]


# ---------------------------------------------------------------------------- checkpoints


def test_project_checkpoint_round_trip(tmp_path):
    from pvdm.checkpoints import load_diffusion, save_diffusion

    model = tiny(cond=False)
    save_diffusion(model, tmp_path / "unet.pt", extra={"step": 7, "ema": True})
    obj = torch.load(tmp_path / "unet.pt", weights_only=True)
    assert obj["kind"] == "diffusion" and obj["step"] == 7 and obj["config"] == model.cfg.to_dict()
    loaded = load_diffusion(tmp_path / "unet.pt")
    assert loaded.cfg == model.cfg and not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


@pytest.mark.parametrize("prefix", ["diffusion_model.", "module.diffusion_model."])
def test_original_format_state_dicts_load(tmp_path, prefix):
    from pvdm.checkpoints import CheckpointError, load_diffusion, save_diffusion

    model = tiny().eval()
    path = tmp_path / "ema_model_10000.pth"
    if prefix == "diffusion_model.":
        save_diffusion(model, path, original_format=True)  # what the original code writes
    else:  # saved from a DDP-wrapped DiffusionWrapper
        torch.save({prefix + k: v for k, v in model.state_dict().items()}, path)
    raw = torch.load(path, weights_only=True)
    assert all(k.startswith(prefix) for k in raw) and prefix + "zeros" in raw
    loaded = load_diffusion(path, cfg=model.cfg)
    x, t = torch.randn(2, 4, 80), torch.tensor([10, 900])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), model(x, t), atol=0, rtol=0)
    with pytest.raises(CheckpointError, match="pass cfg"):
        load_diffusion(path)  # small width: the config cannot be guessed
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_diffusion(path, cfg=UNetConfig(**{**TINY, "model_channels": 64}))


@pytest.mark.parametrize("cond", [True, False])
def test_paper_config_is_inferred_from_original_shapes(cond):
    from pvdm.checkpoints import infer_diffusion_config

    with torch.device("meta"):
        state = TriplaneUNet(UNetConfig.paper(cond=cond)).state_dict()
    assert infer_diffusion_config(state) == UNetConfig.paper(cond=cond)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_runs_under_bf16_autocast():
    model = tiny().eval()
    g = torch.Generator().manual_seed(2)
    x, c = torch.randn(2, 4, 80, generator=g), torch.randn(2, 4, 80, generator=g)
    t = torch.tensor([3, 700])
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        ref = model(x, t, c)
        model.cuda()
        out = model(x.cuda(), t.cuda(), c.cuda())
        torch.testing.assert_close(out.cpu(), ref, atol=1e-4, rtol=1e-3)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model(x.cuda(), t.cuda(), c.cuda())
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert (low.cpu() - ref).abs().max() < 0.05 * ref.abs().max()
