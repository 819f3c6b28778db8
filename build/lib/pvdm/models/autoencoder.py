"""Triplane ("projected latent") video autoencoder of PVDM, checkpoint-compatible with the original.

    x [B, 3, T, H, W] in [-1, 1]
      -> TimeSformer encoder: p x p patches, divided time / space attention with rotary embeddings, GEGLU
      -> three small projection transformers, each collapsing one axis of the token grid:
         xy (over t), yt (over h), xt (over w)
      -> 1x1 conv to C channels + tanh, flattened and concatenated: z [B, C, H'W' + T W' + T H']
      -> 1x1 convs back to width D, broadcast sum to a [B, D, T, H', W'] grid
      -> TimeSformer decoder -> ConvTranspose2d back to pixels -> 2 sigmoid - 1

Module and parameter names are those of the original ``ViTAutoencoder`` (sihyun-yu/PVDM), so its
state dicts load directly. Differences from the original: patch size, frame count and plane sizes
follow the config (the original hard-codes 16 frames at 256 px and breaks at 128 px), attention runs
through ``scaled_dot_product_attention`` (no materialised score matrices), and every transformer
layer can be activation-checkpointed.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

Rotary = tuple[torch.Tensor, torch.Tensor]  # (sin, cos), each [n, dim_head]


@dataclass
class AutoencoderConfig:
    """Architecture of the triplane autoencoder.

    The defaults are a small CPU model for the embedded 64x64, 16-frame Moving-MNIST data (latent
    planes 8x8, 16x8, 16x8 with 8 channels: 8 instead of the paper's 4 reconstructs visibly better at
    the same cost); ``AutoencoderConfig.paper()`` is the original base.yaml model.
    """

    resolution: int = 64  # frame side R (frames are square)
    frames: int = 16  # clip length T
    patch_size: int = 8  # p; the latent side is R / p
    channels: int = 96  # transformer width D
    depth: int = 2  # layers of the encoder and of the decoder
    heads: int = 4
    dim_head: int = 24  # multiple of 4 (axial rotary: 2 axes x (sin, cos) pairs)
    ff_mult: int = 4  # GEGLU hidden width = ff_mult * D
    embed_dim: int = 8  # latent channels C
    proj_depth: int = 1  # layers of each projection transformer
    proj_heads: int = 4
    proj_dim_head: int = 24
    proj_mlp_dim: int = 192
    gradient_checkpointing: bool = False  # recompute each layer in backward (memory for time)

    @classmethod
    def paper(cls, **overrides: Any) -> AutoencoderConfig:
        """The original configs/autoencoder/base.yaml model (62,064,399 parameters)."""
        base = dict(
            resolution=256, frames=16, patch_size=8, channels=384, depth=8, heads=8, dim_head=64, ff_mult=4,
            embed_dim=4, proj_depth=4, proj_heads=4, proj_dim_head=48, proj_mlp_dim=512,
        )
        return cls.from_dict({**base, **overrides})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AutoencoderConfig:
        """Build from a plain mapping; unknown keys and wrong types raise ValueError naming the key."""
        if not isinstance(d, Mapping):
            raise ValueError(f"autoencoder config must be a mapping, got {type(d).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            raise ValueError(f"autoencoder config: unknown key(s) {unknown}; known keys: {known}")
        return cls(**dict(d))

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, expected = getattr(self, f.name), hints[f.name]
            # bool is a subclass of int: reject it for int fields and vice versa.
            if expected is bool and not isinstance(value, bool):
                raise ValueError(f"autoencoder config: {f.name} must be a bool, got {value!r}")
            if expected is int:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"autoencoder config: {f.name} must be an int, got {value!r}")
                if value < 1:
                    raise ValueError(f"autoencoder config: {f.name} must be >= 1, got {value}")
        if self.resolution % self.patch_size != 0:
            raise ValueError(
                f"autoencoder config: resolution {self.resolution} is not divisible by patch_size "
                f"{self.patch_size}"
            )
        if self.dim_head % 4 != 0:
            raise ValueError(
                f"autoencoder config: dim_head must be a multiple of 4 (axial rotary embedding), "
                f"got {self.dim_head}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def latent_side(self) -> int:
        """H' = W' = R / p."""
        return self.resolution // self.patch_size

    @property
    def latent_frames(self) -> int:
        """T (the time axis of the yt and xt planes)."""
        return self.frames

    @property
    def latent_length(self) -> int:
        """L = H'W' + T W' + T H'."""
        return sum(h * w for h, w in self.plane_shapes().values())

    def plane_shapes(self) -> dict[str, tuple[int, int]]:
        """Spatial shape of each plane, in latent order: xy (h, w), yt (t, w), xt (t, h)."""
        s, t = self.latent_side, self.frames
        return {"xy": (s, s), "yt": (t, s), "xt": (t, s)}


# ---------------------------------------------------------------------------------------------
# Rotary embeddings. The two layouts differ on purpose (the original's); both must be reproduced:
# time uses concatenated [theta, theta] angles, space uses interleaved [a0, a0, a1, a1, ...], and
# the rotation always pairs adjacent elements.


def apply_rotary(x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
    """x * cos + rot(x) * sin with rot(x0, x1, x2, x3, ...) = (-x1, x0, -x3, x2, ...).

    Computed as swap_pairs(x) * (sign * sin): the same numbers with fewer passes over memory.
    """
    sin, cos = (t.to(x.dtype) for t in rotary)
    signed_sin = sin * torch.tensor([-1.0, 1.0], dtype=x.dtype, device=x.device).repeat(sin.shape[-1] // 2)
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x1, x0, x3, x2, ...)
    return x * cos + swapped * signed_sin


class FrameRotary(nn.Module):
    """1-D rotary over frame index 0..T-1, frequencies 1 / 10000^(2i / dim_head)."""

    def __init__(self, dim_head: int):
        super().__init__()
        self.register_buffer("inv_freqs", 1.0 / (10000 ** (torch.arange(0, dim_head, 2).float() / dim_head)))

    def forward(self, frames: int) -> Rotary:
        inv_freqs = self.inv_freqs.to(torch.promote_types(self.inv_freqs.dtype, torch.float32))
        angles = torch.outer(torch.arange(frames, device=inv_freqs.device, dtype=inv_freqs.dtype), inv_freqs)
        angles = torch.cat((angles, angles), dim=-1)  # t dim_head, concatenated layout
        return angles.sin(), angles.cos()


class AxialRotary(nn.Module):
    """2-D rotary over (row, col) in linspace(-1, 1), dim_head / 4 scales 2^linspace(0, log2(max_freq / 2))."""

    def __init__(self, dim_head: int, max_freq: float = 10.0):
        super().__init__()
        scales = torch.logspace(0.0, math.log(max_freq / 2) / math.log(2), dim_head // 4, base=2)
        self.register_buffer("scales", scales)

    def forward(self, rows: int, cols: int) -> Rotary:
        scales = self.scales.to(torch.promote_types(self.scales.dtype, torch.float32))
        row_angles = torch.linspace(-1.0, 1.0, rows, device=scales.device)[:, None] * scales * math.pi
        col_angles = torch.linspace(-1.0, 1.0, cols, device=scales.device)[:, None] * scales * math.pi
        angles = torch.cat(
            (row_angles[:, None, :].expand(rows, cols, -1), col_angles[None, :, :].expand(rows, cols, -1)), dim=-1
        ).reshape(rows * cols, -1)  # (h w) dim_head/2, row-major tokens
        angles = angles.repeat_interleave(2, dim=-1)  # (h w) dim_head, interleaved layout
        return angles.sin(), angles.cos()


# ---------------------------------------------------------------------------------------------
# Transformer pieces (names and indices as in the original so that state-dict keys match).


class Attention(nn.Module):
    """Multi-head self-attention over [b, n, dim] sequences; optional rotary on q and k."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.scale = dim_head**-0.5
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim))  # `.0` like the original (Dropout(0) at .1)

    def forward(self, x: torch.Tensor, rotary: Rotary | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)  # 3 b h n d
        # The original scales q *before* the rotary; sdpa must then not scale a second time.
        q = q * self.scale
        if rotary is not None:
            q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # b h n d
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))


class GEGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = x.chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """Linear -> GEGLU or GELU -> Linear. The Identity sits where the original has Dropout(0), keeping
    the parameter keys `net.0` and `net.3`."""

    def __init__(self, dim: int, hidden: int, geglu: bool):
        super().__init__()
        if geglu:
            self.net = nn.Sequential(nn.Linear(dim, 2 * hidden), GEGLU(), nn.Identity(), nn.Linear(hidden, dim))
        else:
            self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Identity(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, *args: Any) -> torch.Tensor:
        return self.fn(self.norm(x), *args)


def maybe_checkpoint(enabled: bool, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class TimeSformer(nn.Module):
    """Pre-norm layers of x += TimeAttn(LN x); x += SpaceAttn(LN x); x += FF(LN x) on b (t h w) d tokens.

    The encoder has a patch embedding (``patch_dim`` given), the decoder does not. No final norm.
    """

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, ff_mult: int, patch_dim: int | None,
                 checkpointing: bool = False):
        super().__init__()
        self.checkpointing = checkpointing
        self.to_patch_embedding = nn.Linear(patch_dim, dim) if patch_dim is not None else None
        self.frame_rot_emb = FrameRotary(dim_head)
        self.image_rot_emb = AxialRotary(dim_head)
        self.layers = nn.ModuleList(
            nn.ModuleList([
                PreNorm(dim, Attention(dim, heads, dim_head)),  # time
                PreNorm(dim, Attention(dim, heads, dim_head)),  # space
                PreNorm(dim, FeedForward(dim, ff_mult * dim, geglu=True)),
            ])
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, frames: int, rows: int, cols: int) -> torch.Tensor:
        if self.to_patch_embedding is not None:
            x = self.to_patch_embedding(x)  # b (t h w) d
        time_rotary = self.frame_rot_emb(frames)
        space_rotary = self.image_rot_emb(rows, cols)
        for layer in self.layers:
            x = maybe_checkpoint(self.checkpointing, self._layer, layer, x, frames, time_rotary, space_rotary)
        return x

    @staticmethod
    def _layer(layer: nn.ModuleList, x: torch.Tensor, frames: int, time_rotary: Rotary,
               space_rotary: Rotary) -> torch.Tensor:
        time_attn, space_attn, ff = layer
        b, length, d = x.shape
        n = length // frames
        # Time attention: one sequence of T frames per spatial position. LayerNorm and the linear
        # layers act per token, so grouping the tokens before them is the same as grouping q, k, v.
        h = x.view(b, frames, n, d).transpose(1, 2).reshape(b * n, frames, d)  # (b n) t d
        h = time_attn(h, time_rotary)
        x = x + h.view(b, n, frames, d).transpose(1, 2).reshape(b, length, d)
        # Space attention: one sequence of H'W' tokens per frame.
        h = space_attn(x.reshape(b * frames, n, d), space_rotary)  # (b t) n d
        x = x + h.view(b, length, d)
        return x + ff(x)


class Transformer(nn.Module):
    """The original's small pre-norm ViT transformer (attention + GELU MLP), used for the projections."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int, checkpointing: bool = False):
        super().__init__()
        self.checkpointing = checkpointing
        self.layers = nn.ModuleList(
            nn.ModuleList([
                PreNorm(dim, Attention(dim, heads, dim_head)),
                PreNorm(dim, FeedForward(dim, mlp_dim, geglu=False)),
            ])
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = maybe_checkpoint(self.checkpointing, self._layer, layer, x)
        return x

    @staticmethod
    def _layer(layer: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        attn, ff = layer
        x = x + attn(x)
        return x + ff(x)


# ---------------------------------------------------------------------------------------------


class TriplaneAutoencoder(nn.Module):
    """PVDM's video autoencoder. x [B, 3, T, H, W] in [-1, 1] <-> z [B, C, H'W' + T W' + T H'] in (-1, 1)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        d, p, side, t = cfg.channels, cfg.patch_size, cfg.latent_side, cfg.frames
        ckpt = cfg.gradient_checkpointing
        self.encoder = TimeSformer(d, cfg.depth, cfg.heads, cfg.dim_head, cfg.ff_mult, 3 * p * p, ckpt)
        self.decoder = TimeSformer(d, cfg.depth, cfg.heads, cfg.dim_head, cfg.ff_mult, None, ckpt)
        # Index 0 is an einops Rearrange in the original; decode() does that reshape itself.
        self.to_pixel = nn.Sequential(nn.Identity(), nn.ConvTranspose2d(d, 3, kernel_size=p, stride=p))
        # Unused (also by the original); registered so that original state dicts load strictly.
        self.register_buffer("coords", torch.linspace(-1, 1, t).unsqueeze(-1))

        # The learnable tokens are appended at the END of each sequence (see _project).
        self.xy_token = nn.Parameter(torch.randn(1, 1, d))
        self.xt_token = nn.Parameter(torch.randn(1, 1, d))
        self.yt_token = nn.Parameter(torch.randn(1, 1, d))
        self.xy_pos_embedding = nn.Parameter(torch.randn(1, t + 1, d))
        self.xt_pos_embedding = nn.Parameter(torch.randn(1, side + 1, d))
        self.yt_pos_embedding = nn.Parameter(torch.randn(1, side + 1, d))
        proj = (d, cfg.proj_depth, cfg.proj_heads, cfg.proj_dim_head, cfg.proj_mlp_dim, ckpt)
        self.xy_quant_attn = Transformer(*proj)
        self.yt_quant_attn = Transformer(*proj)
        self.xt_quant_attn = Transformer(*proj)

        self.pre_xy = nn.Conv2d(d, cfg.embed_dim, 1)
        self.pre_xt = nn.Conv2d(d, cfg.embed_dim, 1)
        self.pre_yt = nn.Conv2d(d, cfg.embed_dim, 1)
        self.post_xy = nn.Conv2d(cfg.embed_dim, d, 1)
        self.post_xt = nn.Conv2d(cfg.embed_dim, d, 1)
        self.post_yt = nn.Conv2d(cfg.embed_dim, d, 1)

    # -- encoder ---------------------------------------------------------------------------

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, T, H, W] in [-1, 1] -> z [B, C, L], L = H'W' + T W' + T H' (xy, yt, xt row-major)."""
        return self.planes_to_latent(*self.encode_planes(x))

    def encode_planes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, 3, T, H, W] -> tanh planes xy [B, C, H', W'], yt [B, C, T, W'], xt [B, C, T, H']."""
        self._check_video(x)
        cfg = self.cfg
        b, t, p, s, d = x.shape[0], cfg.frames, cfg.patch_size, cfg.latent_side, cfg.channels
        # Patchify: tokens in (frame, row, col) order, features in (p1, p2, c) order as in the original.
        patches = x.reshape(b, 3, t, s, p, s, p).permute(0, 2, 3, 5, 4, 6, 1).reshape(b, t * s * s, p * p * 3)
        h = self.encoder(patches, t, s, s).view(b, t, s, s, d)  # b t h w d

        xy = self._project(self.xy_quant_attn, self.xy_token, self.xy_pos_embedding, h.permute(0, 2, 3, 1, 4))
        yt = self._project(self.yt_quant_attn, self.yt_token, self.yt_pos_embedding, h.permute(0, 1, 3, 2, 4))
        xt = self._project(self.xt_quant_attn, self.xt_token, self.xt_pos_embedding, h)
        xy = torch.tanh(self.pre_xy(xy.permute(0, 3, 1, 2)))  # b c h w
        yt = torch.tanh(self.pre_yt(yt.permute(0, 3, 1, 2)))  # b c t w
        xt = torch.tanh(self.pre_xt(xt.permute(0, 3, 1, 2)))  # b c t h
        return xy, yt, xt

    @staticmethod
    def _project(transformer: Transformer, token: torch.Tensor, pos_embedding: torch.Tensor,
                 h: torch.Tensor) -> torch.Tensor:
        """Collapse the second-to-last axis: h [..., n, d] -> [..., d].

        The token is appended at the end but position 0 (the first frame/row/column) is read out:
        the original's quirk, kept because the weights were trained that way.
        """
        *lead, n, d = h.shape
        seq = h.reshape(-1, n, d)
        seq = torch.cat([seq, token.expand(seq.shape[0], 1, d)], dim=1) + pos_embedding[:, : n + 1]
        return transformer(seq)[:, 0].reshape(*lead, d)

    # -- decoder ---------------------------------------------------------------------------

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, C, L] -> x_hat [B, 3, T, H, W] in (-1, 1)."""
        return self.decode_planes(*self.latent_to_planes(z))

    def decode_planes(self, xy: torch.Tensor, yt: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        b, t, s, d, r = xy.shape[0], cfg.frames, cfg.latent_side, cfg.channels, cfg.resolution
        # Broadcast sum: xy over t, yt over h, xt over w.
        grid = self.post_xy(xy).unsqueeze(2) + self.post_yt(yt).unsqueeze(3) + self.post_xt(xt).unsqueeze(4)  # b d t h w
        h = self.decoder(grid.flatten(2).transpose(1, 2), t, s, s)  # b (t h w) d
        h = h.view(b, t, s, s, d).permute(0, 1, 4, 2, 3).reshape(b * t, d, s, s)  # (b t) d h w
        frames = 2 * torch.sigmoid(self.to_pixel(h)) - 1  # (b t) 3 H W
        return frames.view(b, t, 3, r, r).transpose(1, 2).contiguous()  # b 3 t H W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction x_hat [B, 3, T, H, W] of x [B, 3, T, H, W]."""
        return self.decode(self.encode(x))

    # -- latent layout ---------------------------------------------------------------------

    def planes_to_latent(self, xy: torch.Tensor, yt: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        """Flatten each plane row-major and concatenate: [B, C, H'W' + T W' + T H'] (original `extract`)."""
        return torch.cat([xy.flatten(2), yt.flatten(2), xt.flatten(2)], dim=-1)

    def latent_to_planes(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        expected = (cfg.embed_dim, cfg.latent_length)
        if z.ndim != 3 or tuple(z.shape[1:]) != expected:
            raise ValueError(f"latent must have shape [B, {expected[0]}, {expected[1]}], got {list(z.shape)}")
        shapes = cfg.plane_shapes()
        parts = z.split([h * w for h, w in shapes.values()], dim=-1)
        return tuple(part.unflatten(-1, hw) for part, hw in zip(parts, shapes.values(), strict=True))

    def _check_video(self, x: torch.Tensor) -> None:
        cfg = self.cfg
        expected = (3, cfg.frames, cfg.resolution, cfg.resolution)
        if x.ndim != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"video must have shape [B, 3, T={cfg.frames}, H={cfg.resolution}, W={cfg.resolution}] "
                f"(b c t h w), got {list(x.shape)}"
            )
