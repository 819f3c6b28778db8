"""TriplaneAutoencoder: config validation, the original's key layout and parameter count, and the
function itself against a plain loop-by-loop re-statement of the original's maths (rotary layouts,
token read-out, plane layout, broadcast-sum decoder, pixel head)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pvdm.models.autoencoder import AutoencoderConfig, TimeSformer, TriplaneAutoencoder

DATA = Path(__file__).parent / "data"

TINY = dict(channels=16, depth=1, heads=2, dim_head=8, ff_mult=2, embed_dim=3, proj_depth=1, proj_heads=2,
            proj_dim_head=8, proj_mlp_dim=32)


def tiny(seed: int = 0, **overrides) -> TriplaneAutoencoder:
    torch.manual_seed(seed)
    return TriplaneAutoencoder(AutoencoderConfig(**{**TINY, **overrides}))


def smooth_video(b: int, t: int, r: int, seed: int = 0) -> torch.Tensor:
    """Low-frequency random video in [-1, 1], # b 3 t r r."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, 3, t, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(t, r, r), mode="trilinear", align_corners=False)


# ------------------------------------------------------------------------------------- config


def test_config_round_trip_and_presets():
    cfg = AutoencoderConfig()
    assert AutoencoderConfig.from_dict(cfg.to_dict()) == cfg
    assert (cfg.resolution, cfg.frames, cfg.latent_side) == (64, 16, 8)
    paper = AutoencoderConfig.paper()
    assert paper.latent_length == 2048 and paper.latent_side == 32 and paper.latent_frames == 16
    assert paper.plane_shapes() == {"xy": (32, 32), "yt": (16, 32), "xt": (16, 32)}
    assert AutoencoderConfig.paper(gradient_checkpointing=True).gradient_checkpointing
    assert AutoencoderConfig(resolution=128, patch_size=4, frames=8).plane_shapes() == {
        "xy": (32, 32), "yt": (8, 32), "xt": (8, 32)}


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"chanels": 96}, r"unknown key\(s\) \['chanels'\]"),
        ({"channels": "96"}, "channels must be an int"),
        ({"channels": 96.0}, "channels must be an int"),
        ({"depth": True}, "depth must be an int"),
        ({"gradient_checkpointing": 1}, "gradient_checkpointing must be a bool"),
        ({"heads": 0}, "heads must be >= 1"),
        ({"resolution": 60}, "resolution 60 is not divisible by patch_size 8"),
        ({"resolution": 128, "patch_size": 5}, "resolution 128 is not divisible by patch_size 5"),
        ({"dim_head": 6}, "dim_head must be a multiple of 4"),
    ],
)
def test_config_errors_name_the_key(bad, message):
    with pytest.raises(ValueError, match=message):
        AutoencoderConfig.from_dict(bad)


def test_bad_inputs_are_clear():
    model = tiny(resolution=32, frames=4)
    with pytest.raises(ValueError, match=r"T=4, H=32, W=32.*got \[1, 3, 8, 32, 32\]"):
        model.encode(torch.zeros(1, 3, 8, 32, 32))
    with pytest.raises(ValueError, match=r"latent must have shape \[B, 3, 48\]"):
        model.decode(torch.zeros(1, 3, 47))


# ------------------------------------------------------------------- original layout (paper)


def test_paper_preset_has_the_original_keys_shapes_and_parameter_count():
    ref = json.loads((DATA / "pvdm_autoencoder_keys.json").read_text())["autoencoder"]
    with torch.device("meta"):
        model = TriplaneAutoencoder(AutoencoderConfig.paper())
    state = model.state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == {e["key"]: e["shape"] for e in ref["keys"]}
    params = dict(model.named_parameters())
    for e in ref["keys"]:
        assert (e["key"] in params) == (e["kind"] == "parameter"), e["key"]
        assert str(state[e["key"]].dtype) == "torch." + e["dtype"], e["key"]
    assert len(state) == ref["n_tensors"] == 415
    assert sum(p.numel() for p in model.parameters()) == ref["n_parameters"] == 62_064_399
    assert sum(b.numel() for b in model.buffers()) == ref["n_buffer_values"] == 112


def test_rotary_buffers_follow_the_formulas():
    model = TimeSformer(dim=32, depth=1, heads=1, dim_head=64, ff_mult=1, patch_dim=None)
    i = torch.arange(32, dtype=torch.float64)
    torch.testing.assert_close(model.frame_rot_emb.inv_freqs.double(), 10000.0 ** (-2 * i / 64))
    scales = model.image_rot_emb.scales.double()
    assert scales.shape == (16,) and scales[0] == 1.0 and abs(scales[-1].item() - 5.0) < 1e-5
    torch.testing.assert_close(scales.log2(), torch.linspace(0, math.log2(5), 16, dtype=torch.float64))


# ------------------------------------------------------ naive re-statement of the original maths


def naive_layer_norm(x, ln):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def naive_gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def naive_time_angles(frames, d):
    """RotaryEmbedding(d): angle t / 10000^(2i/d), i = 0..d/2-1, laid out as [theta, theta] (concatenated)."""
    out = torch.zeros(frames, d, dtype=torch.float64)
    for t in range(frames):
        for j in range(d):
            out[t, j] = t / 10000 ** (2 * (j % (d // 2)) / d)
    return out


def naive_space_angles(rows, cols, d):
    """AxialRotaryEmbedding(d, max_freq=10): d/4 scales 2^linspace(0, log2 5); coordinates linspace(-1, 1);
    [row angles, col angles] per token (row-major), each value repeated twice (interleaved)."""
    q = d // 4
    scales = [2 ** (k * math.log2(5) / (q - 1)) for k in range(q)]
    out = torch.zeros(rows * cols, d, dtype=torch.float64)
    for r in range(rows):
        for c in range(cols):
            y, x = -1 + 2 * r / (rows - 1), -1 + 2 * c / (cols - 1)
            values = [y * s * math.pi for s in scales] + [x * s * math.pi for s in scales]
            for j in range(d):
                out[r * cols + c, j] = values[j // 2]
    return out


def naive_rotate(x, angles):
    """q * cos + rot(q) * sin with rot acting on adjacent pairs (x0, x1) -> (-x1, x0)."""
    sin, cos = angles.sin(), angles.cos()
    out = torch.empty_like(x)
    out[..., 0::2] = x[..., 0::2] * cos[..., 0::2] - x[..., 1::2] * sin[..., 0::2]
    out[..., 1::2] = x[..., 1::2] * cos[..., 1::2] + x[..., 0::2] * sin[..., 1::2]
    return out


def naive_attention(x, attn, angles=None):
    """x [n, D], one sequence. to_qkv -> q, k, v each (h d) head-major; q scaled by d^-0.5 before rotary."""
    inner = attn.heads * attn.dim_head
    qkv = x @ attn.to_qkv.weight.double().T
    q, k, v = qkv[:, :inner], qkv[:, inner: 2 * inner], qkv[:, 2 * inner:]
    heads = []
    for h in range(attn.heads):
        sl = slice(h * attn.dim_head, (h + 1) * attn.dim_head)
        qh, kh, vh = q[:, sl] * attn.dim_head**-0.5, k[:, sl], v[:, sl]
        if angles is not None:
            qh, kh = naive_rotate(qh, angles), naive_rotate(kh, angles)
        heads.append(torch.softmax(qh @ kh.T, dim=-1) @ vh)
    out_proj = attn.to_out[0]
    return torch.cat(heads, dim=-1) @ out_proj.weight.double().T + out_proj.bias.double()


def naive_timesformer(x, model, frames, rows, cols):
    """x [(t h w), D] tokens of one video."""
    n = rows * cols
    time_angles = naive_time_angles(frames, model.frame_rot_emb.inv_freqs.numel() * 2)
    space_angles = naive_space_angles(rows, cols, model.image_rot_emb.scales.numel() * 4)
    for time_attn, space_attn, ff in model.layers:
        y, out = naive_layer_norm(x, time_attn.norm), torch.zeros_like(x)
        for s in range(n):  # one sequence over frames per spatial position
            idx = [t * n + s for t in range(frames)]
            out[idx] = naive_attention(y[idx], time_attn.fn, time_angles)
        x = x + out
        y, out = naive_layer_norm(x, space_attn.norm), torch.zeros_like(x)
        for t in range(frames):  # one sequence over positions per frame
            idx = list(range(t * n, (t + 1) * n))
            out[idx] = naive_attention(y[idx], space_attn.fn, space_angles)
        x = x + out
        lin_in, lin_out = ff.fn.net[0], ff.fn.net[3]
        h = naive_layer_norm(x, ff.norm) @ lin_in.weight.double().T + lin_in.bias.double()
        value, gate = h[:, : h.shape[1] // 2], h[:, h.shape[1] // 2:]  # GEGLU: first half value, second gate
        x = x + (value * naive_gelu(gate)) @ lin_out.weight.double().T + lin_out.bias.double()
    return x


def test_timesformer_matches_naive_divided_attention_with_both_rotary_layouts():
    torch.manual_seed(0)
    frames, rows, cols = 5, 3, 4  # rows != cols: a row/column swap in the axial rotary would show
    model = TimeSformer(dim=16, depth=2, heads=2, dim_head=8, ff_mult=2, patch_dim=None)
    x = torch.randn(2, frames * rows * cols, 16)
    with torch.no_grad():
        out = model(x, frames, rows, cols)  # float32, the production sdpa path
        ref = torch.stack([naive_timesformer(v.double(), model, frames, rows, cols) for v in x])
    assert (out.double() - ref).abs().max() < 1e-5
    assert (out - x).abs().max() > 0.1  # the layers did something


def naive_transformer(x, model):
    for attn, ff in model.layers:
        x = x + naive_attention(naive_layer_norm(x, attn.norm), attn.fn)
        lin_in, lin_out = ff.fn.net[0], ff.fn.net[3]
        h = naive_gelu(naive_layer_norm(x, ff.norm) @ lin_in.weight.double().T + lin_in.bias.double())
        x = x + h @ lin_out.weight.double().T + lin_out.bias.double()
    return x


def naive_project(seq, transformer, token, pos):
    """Token appended at the END, positional embedding added, position 0 read out."""
    z = torch.cat([seq, token[0].double()], dim=0) + pos[0].double()
    return naive_transformer(z, transformer)[0]


def conv1x1(conv, v):
    """1x1 convolution of feature vectors v [..., C_in]."""
    return v @ conv.weight.double()[:, :, 0, 0].T + conv.bias.double()


def test_encode_matches_naive_patchify_projection_and_latent_layout():
    model = tiny(resolution=16, patch_size=4, frames=3).double()
    cfg, (b, p, s, t) = model.cfg, (2, 4, 4, 3)
    x = smooth_video(b, t, 16).double()
    seen = {}
    model.encoder.register_forward_pre_hook(lambda m, args: seen.__setitem__("patches", args[0]))
    model.encoder.register_forward_hook(lambda m, args, out: seen.__setitem__("tokens", out))
    with torch.no_grad():
        z = model.encode(x)
    assert z.shape == (b, cfg.embed_dim, s * s + 2 * t * s)

    # Patchify: token (t, i, j), feature (u, v, channel) with the channel fastest.
    patches = torch.zeros(b, t * s * s, p * p * 3, dtype=torch.float64)
    for ti in range(t):
        for i in range(s):
            for j in range(s):
                for u in range(p):
                    for v in range(p):
                        for ch in range(3):
                            patches[:, ti * s * s + i * s + j, (u * p + v) * 3 + ch] = x[:, ch, ti, i * p + u, j * p + v]
    torch.testing.assert_close(seen["patches"], patches, rtol=0, atol=0)

    grid = seen["tokens"].view(b, t, s, s, -1)  # b t h w d
    ref = torch.zeros_like(z)
    m = model
    with torch.no_grad():
        for bi in range(b):
            for i in range(s):  # xy: over time, at z[i * s + j]
                for j in range(s):
                    h = naive_project(grid[bi, :, i, j], m.xy_quant_attn, m.xy_token, m.xy_pos_embedding)
                    ref[bi, :, i * s + j] = torch.tanh(conv1x1(m.pre_xy, h))
            for ti in range(t):  # yt: over h, at z[s*s + t * s + w]
                for j in range(s):
                    h = naive_project(grid[bi, ti, :, j], m.yt_quant_attn, m.yt_token, m.yt_pos_embedding)
                    ref[bi, :, s * s + ti * s + j] = torch.tanh(conv1x1(m.pre_yt, h))
            for ti in range(t):  # xt: over w, at z[s*s + t*s + t * s + h]
                for i in range(s):
                    h = naive_project(grid[bi, ti, i, :], m.xt_quant_attn, m.xt_token, m.xt_pos_embedding)
                    ref[bi, :, s * s + t * s + ti * s + i] = torch.tanh(conv1x1(m.pre_xt, h))
    torch.testing.assert_close(z, ref, rtol=0, atol=1e-10)


def test_decode_matches_naive_broadcast_sum_and_pixel_head():
    model = tiny(resolution=16, patch_size=4, frames=3).double()
    cfg, (b, p, s, t, d) = model.cfg, (2, 4, 4, 3, 16)
    z = torch.rand(b, cfg.embed_dim, cfg.latent_length, dtype=torch.float64) * 2 - 1
    seen = {}
    model.decoder.register_forward_pre_hook(lambda mod, args: seen.__setitem__("tokens", args[0]))
    model.decoder.register_forward_hook(lambda mod, args, out: seen.__setitem__("out", out))
    with torch.no_grad():
        x_hat = model.decode(z)
    assert x_hat.shape == (b, 3, t, 16, 16)

    m, tokens = model, torch.zeros(b, t * s * s, d, dtype=torch.float64)
    for ti in range(t):
        for i in range(s):
            for j in range(s):
                xy = conv1x1(m.post_xy, z[:, :, i * s + j])  # xy broadcast over t
                yt = conv1x1(m.post_yt, z[:, :, s * s + ti * s + j])  # yt over h
                xt = conv1x1(m.post_xt, z[:, :, s * s + t * s + ti * s + i])  # xt over w
                tokens[:, ti * s * s + i * s + j] = xy + yt + xt
    torch.testing.assert_close(seen["tokens"], tokens, rtol=0, atol=1e-12)

    # ConvTranspose2d(kernel = stride = p) per frame, then 2 sigmoid - 1.
    weight, bias = m.to_pixel[1].weight.double(), m.to_pixel[1].bias.double()  # d 3 p p
    out = seen["out"].view(b, t, s, s, d)
    ref = torch.zeros(b, 3, t, 16, 16, dtype=torch.float64)
    for i in range(s):
        for j in range(s):
            patch = torch.einsum("btd,dcuv->bctuv", out[:, :, i, j], weight) + bias[None, :, None, None, None]
            ref[:, :, :, i * p: (i + 1) * p, j * p: (j + 1) * p] = patch
    torch.testing.assert_close(x_hat, 2 * torch.sigmoid(ref) - 1, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------ shapes and training


@pytest.mark.parametrize("resolution", [64, 128, 256])
@pytest.mark.parametrize("frames", [8, 16, 32])
def test_shapes_across_resolutions_and_frames(resolution, frames):
    model = tiny(resolution=resolution, frames=frames, channels=8, heads=1, proj_heads=1, proj_mlp_dim=8)
    s = resolution // 8
    x = smooth_video(1, frames, resolution)
    with torch.no_grad():
        z = model.encode(x)
        x_hat = model.decode(z)
    assert z.shape == (1, 3, s * s + 2 * frames * s) == (1, 3, model.cfg.latent_length)
    assert z.abs().max() < 1 and x_hat.shape == x.shape and x_hat.abs().max() < 1
    planes = model.latent_to_planes(z)
    assert [tuple(p.shape[2:]) for p in planes] == list(model.cfg.plane_shapes().values())
    torch.testing.assert_close(model.planes_to_latent(*planes), z, rtol=0, atol=0)


def test_patch_four_at_128px_works():  # the original breaks here (latent side computed as R / 8)
    model = tiny(resolution=128, patch_size=4, frames=4, channels=8, heads=1, proj_heads=1, proj_mlp_dim=8)
    with torch.no_grad():
        z = model.encode(smooth_video(1, 4, 128))
        assert z.shape == (1, 3, 32 * 32 + 2 * 4 * 32)
        assert model.decode(z).shape == (1, 3, 4, 128, 128)


def test_forward_is_decode_of_encode_and_a_few_steps_lower_the_loss():
    model = tiny(resolution=32, frames=4)
    x = smooth_video(2, 4, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.decode(model.encode(x)), rtol=0, atol=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = (model(x) - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses


def test_same_seed_same_model_and_output():
    x = smooth_video(1, 4, 32)
    a, b, c = tiny(0, resolution=32, frames=4), tiny(0, resolution=32, frames=4), tiny(1, resolution=32, frames=4)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert not torch.equal(a.xy_token, c.xy_token)
    with torch.no_grad():
        assert torch.equal(a(x), b(x)) and not torch.equal(a(x), c(x))


def test_gradient_checkpointing_recomputes_and_gives_identical_outputs_and_grads():
    plain = tiny(resolution=32, frames=4)
    ckpt = TriplaneAutoencoder(replace(plain.cfg, gradient_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    x = smooth_video(2, 4, 32)
    calls = {}
    for name, model in (("plain", plain), ("ckpt", ckpt)):
        calls[name] = 0
        layer = model.encoder.layers[0][0]
        layer.register_forward_pre_hook(lambda *a, name=name: calls.__setitem__(name, calls[name] + 1))
    outs = [m(x) for m in (plain, ckpt)]
    for out in outs:
        (out - x).abs().mean().backward()
    assert calls == {"plain": 1, "ckpt": 2}  # the checkpointed layer ran again in backward
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    grads = dict(ckpt.named_parameters())
    for name, p in plain.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=0, atol=1e-7, msg=name)
