"""Triplane U-Net: the PVDM latent denoiser.

An ADM-style 2-D U-Net (scale-shift norm, residual up/down blocks, multi-head attention) whose
weights are shared by the three latent planes xy [S, S], yt [T, S] and xt [T, S], plus a joint 1-D
attention over the tokens of all three planes after every block, so the planes exchange
information. Same function and same state-dict keys (below the original's ``diffusion_model.``
prefix, which the checkpoint loader owns) as PVDM's ``UNetModel``.

Differences from the original that do not change the function:
- yt and xt have the same shape, so they run as one batch ``[2B, C, T, S]`` (half the kernel calls);
  GroupNorm and 2-D attention stay per sample and per plane.
- attention uses ``scaled_dot_product_attention`` without the original's recompute-in-backward
  checkpoint (memory is dominated by the weights at batch 1 anyway).
- the plane sizes come from the config (the original hard-codes 32 and 16).

One addition, off by default (the original's function and keys): ``position_embedding`` adds learned
per-plane, per-position embeddings after the input convolution. Without them a token knows its plane
and position only through zero padding, and the joint attention sees an unordered set; on the CPU demo
they turn grid-like ghost copies into single digits (benchmarks/demo_search).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------
# Config

PREDICTIONS = ("eps", "v")


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters. Defaults: a small CPU model for the Moving-MNIST default autoencoder
    (4 latent channels, latent side 8, 16 frames: L = 8*8 + 16*8 + 16*8 = 320)."""

    in_channels: int = 4  # latent channels C (output channels too: epsilon prediction)
    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (2, 4)  # downsampling factors that get 2-D attention
    num_heads: int = 4
    num_head_channels: int = -1  # > 0: heads = channels // num_head_channels (overrides num_heads)
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True  # False: strided-conv down / nearest+conv up
    cond: bool = True  # concatenate a condition latent (previous clip, or zeros) on channels
    latent_side: int = 8  # S: xy plane is S x S (from the autoencoder config)
    latent_frames: int = 16  # T: yt and xt planes are T x S (from the autoencoder config)
    # What the output is: "eps" (the noise, the original PVDM) or "v" = sqrt(abar) eps - sqrt(1 - abar) x0.
    # The diffusion process reads it from the checkpoint's config to turn outputs into (eps, x0).
    prediction: str = "eps"
    # Learned per-plane, per-position embeddings added after the input convolution. The original has
    # none: its weights are shared by the three planes and its joint attention sees a set of tokens, so
    # a token knows its plane and position only through zero padding. Off keeps the original's keys.
    position_embedding: bool = False

    def __post_init__(self) -> None:
        # Lists from YAML/JSON become tuples so the config stays hashable and comparable.
        for name in ("channel_mult", "attention_resolutions"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        positive = ("in_channels", "model_channels", "num_res_blocks", "latent_side", "latent_frames")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"UNetConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ValueError(f"UNetConfig.channel_mult must be positive integers, got {self.channel_mult}")
        if any(ds < 1 for ds in self.attention_resolutions):
            raise ValueError(f"UNetConfig.attention_resolutions must be >= 1, got {self.attention_resolutions}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"UNetConfig.prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout}")
        for mult in self.channel_mult:
            ch = self.model_channels * mult
            if ch % GROUPS:
                raise ValueError(
                    f"UNetConfig.model_channels * channel_mult = {ch} must be divisible by {GROUPS} (GroupNorm32)"
                )
            if self.num_head_channels > 0:
                if ch % self.num_head_channels:
                    raise ValueError(f"UNetConfig.num_head_channels={self.num_head_channels} does not divide {ch}")
            elif self.num_heads < 1 or ch % self.num_heads:
                raise ValueError(f"UNetConfig.num_heads={self.num_heads} must be >= 1 and divide {ch}")
        # Down blocks halve S and T (floor); up blocks double them: they must stay integral.
        factor = 2 ** (len(self.channel_mult) - 1)
        for name in ("latent_side", "latent_frames"):
            if getattr(self, name) % factor:
                raise ValueError(
                    f"UNetConfig.{name}={getattr(self, name)} must be divisible by 2**(len(channel_mult)-1)"
                    f" = {factor}: the U-Net halves the plane sizes {len(self.channel_mult) - 1} times"
                )

    @property
    def latent_length(self) -> int:
        """L: tokens of the flattened triplane vector, xy | yt | xt."""
        s, t = self.latent_side, self.latent_frames
        return s * s + 2 * t * s

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise ValueError(f"UNetConfig: unknown key {key!r} (allowed: {', '.join(sorted(known))})")
        return cls(**d)

    @classmethod
    def paper(cls, cond: bool = True) -> UNetConfig:
        """configs/latent-diffusion/base.yaml of the original (PVDM-L, 256x256x16 video, latent 32/16)."""
        return cls(
            in_channels=4,
            model_channels=256,
            channel_mult=(1, 2, 4, 4),
            num_res_blocks=2,
            attention_resolutions=(4, 2, 1),
            num_heads=8,
            num_head_channels=-1,
            dropout=0.0,
            use_scale_shift_norm=True,
            resblock_updown=True,
            cond=cond,
            latent_side=32,
            latent_frames=16,
        )


def _check_type(name: str, value: Any, annotation: str) -> None:
    ok = {
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
        "tuple[int, ...]": lambda v: isinstance(v, tuple)
        and all(isinstance(x, int) and not isinstance(x, bool) for x in v),
    }[annotation]
    if not ok(value):
        raise ValueError(f"UNetConfig.{name} must be {annotation}, got {value!r} ({type(value).__name__})")


GROUPS = 32  # GroupNorm32, as in ADM

# ----------------------------------------------------------------------------
# Layers


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of (possibly fractional) timesteps: [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # b half
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 (stable under bf16/fp16 autocast)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def zero_module(module: nn.Module) -> nn.Module:
    # Residual branches start as the identity: output convs/projections are zero-initialised.
    for p in module.parameters():
        p.detach().zero_()
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, timestep FiLM (scale-shift), GroupNorm-SiLU-dropout-zero conv; optional
    2x down (avg-pool) or up (nearest) applied to both branches."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = True,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.up, self.down = up, down
        self.in_layers = nn.Sequential(
            GroupNorm32(GROUPS, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(GROUPS, out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            return F.avg_pool2d(x, 2)
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # x: n c h w, emb: n e
        norm, act, conv = self.in_layers
        h = conv(self._resample(act(norm(x))))
        x = self._resample(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]  # n 2c 1 1
        out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = out_rest(torch.addcmul(shift, out_norm(h), 1 + scale))
        else:
            h = out_rest(out_norm(h + emb_out))
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    """Strided 3x3 conv (only with resblock_updown=False)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest 2x then 3x3 conv (only with resblock_updown=False)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all positions of ``[N, C, *spatial]``, residual.

    qkv channels are grouped per head as [q_h | k_h | v_h] (ADM's "legacy" order), which fixes how
    the original's qkv weights are read. The 1/sqrt(d) scale equals ADM's d^-1/4 on q and on k.
    """

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = GroupNorm32(GROUPS, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, *spatial = x.shape
        x = x.reshape(n, c, -1)  # n c l
        h = self.norm(x).transpose(1, 2)  # n l c
        # 1x1 convs as matmuls on the token-major layout that sdpa wants.
        qkv = F.linear(h, self.qkv.weight[:, :, 0], self.qkv.bias)  # n l 3c
        qkv = qkv.view(n, -1, self.num_heads, 3, c // self.num_heads).permute(3, 0, 2, 1, 4)  # 3 n heads l d
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # n heads l d
        a = a.transpose(1, 2).reshape(n, -1, c)  # n l c
        h = F.linear(a, self.proj_out.weight[:, :, 0], self.proj_out.bias).transpose(1, 2)  # n c l
        return (x + h).reshape(n, c, *spatial)


class EmbedSequential(nn.Sequential):
    """Sequential that hands the timestep embedding to the ResBlocks."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


# ----------------------------------------------------------------------------
# Model


class TriplaneUNet(nn.Module):
    """forward(x_t [B, C, L], t [B], cond [B, C, L] | None) -> eps [B, C, L]; L = S*S + 2*T*S."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        mc, emb_dim = cfg.model_channels, cfg.model_channels * 4

        def heads(ch: int) -> int:
            return ch // cfg.num_head_channels if cfg.num_head_channels > 0 else cfg.num_heads

        def resblock(ch_in: int, ch_out: int, **updown: bool) -> ResBlock:
            return ResBlock(ch_in, emb_dim, cfg.dropout, ch_out, cfg.use_scale_shift_norm, **updown)

        if cfg.cond:
            # The "no condition" input of the original (a persistent buffer: part of its checkpoints).
            self.register_buffer("zeros", torch.zeros(1, cfg.in_channels, cfg.latent_length))
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        in_ch = cfg.in_channels * (2 if cfg.cond else 1)
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_ch, mc, 3, padding=1))])
        self.input_attns = nn.ModuleList([nn.Identity()])
        if cfg.position_embedding:
            s, t = cfg.latent_side, cfg.latent_frames
            self.pos_xy = nn.Parameter(torch.randn(1, mc, s, s) * mc**-0.5)  # 1 c s s
            self.pos_tp = nn.Parameter(torch.randn(2, mc, t, s) * mc**-0.5)  # (yt, xt) c t s
        skip_chans, ch, ds = [mc], mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [resblock(ch, mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch, heads(ch)))
                self.input_blocks.append(EmbedSequential(*layers))
                self.input_attns.append(AttentionBlock(ch, heads(ch)))
                skip_chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                down = resblock(ch, ch, down=True) if cfg.resblock_updown else Downsample(ch)
                self.input_blocks.append(EmbedSequential(down))
                self.input_attns.append(AttentionBlock(ch, heads(ch)))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = EmbedSequential(resblock(ch, ch), AttentionBlock(ch, heads(ch)), resblock(ch, ch))
        self.mid_attn = AttentionBlock(ch, heads(ch))

        self.output_blocks = nn.ModuleList()
        self.output_attns = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [resblock(ch + skip_chans.pop(), mc * mult)]
                ch = mc * mult
                if ds in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch, heads(ch)))
                if level and i == cfg.num_res_blocks:
                    layers.append(resblock(ch, ch, up=True) if cfg.resblock_updown else Upsample(ch))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
                self.output_attns.append(AttentionBlock(ch, heads(ch)))

        self.out = nn.Sequential(
            GroupNorm32(GROUPS, ch), nn.SiLU(), zero_module(nn.Conv2d(mc, cfg.in_channels, 3, padding=1))
        )

    # -- plane bookkeeping: xy [B, C, S, S]; tp = yt and xt stacked on batch [2B, C, T, S]

    @staticmethod
    def _split(h: torch.Tensor, s: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, _ = h.shape
        xy = h[:, :, : s * s].reshape(b, c, s, s)
        yt = h[:, :, s * s : s * s + t * s].reshape(b, c, t, s)
        xt = h[:, :, s * s + t * s :].reshape(b, c, t, s)
        return xy, torch.cat([yt, xt], dim=0)

    @staticmethod
    def _join(xy: torch.Tensor, tp: torch.Tensor) -> torch.Tensor:
        b = xy.shape[0]
        return torch.cat([xy.flatten(2), tp[:b].flatten(2), tp[b:].flatten(2)], dim=-1)  # b c l

    def _joint_attention(
        self, attn: nn.Module, xy: torch.Tensor, tp: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(attn, nn.Identity):
            return xy, tp
        s, t = xy.shape[-1], tp.shape[-2]
        return self._split(attn(self._join(xy, tp)), s, t)

    def _check(self, name: str, z: torch.Tensor, batch: int | None = None) -> None:
        c, length = self.cfg.in_channels, self.cfg.latent_length
        if z.ndim != 3 or z.shape[1] != c or z.shape[2] != length or (batch is not None and z.shape[0] != batch):
            b = "B" if batch is None else str(batch)
            raise ValueError(
                f"TriplaneUNet: {name} must have shape [{b}, {c}, {length}] (C, S*S + 2*T*S with "
                f"S={self.cfg.latent_side}, T={self.cfg.latent_frames}), got {list(z.shape)}"
            )

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        self._check("x_t", x_t)
        b = x_t.shape[0]
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"TriplaneUNet: t must have shape [{b}], got {list(t.shape)}")
        if self.cfg.cond:
            if cond is None:
                cond = self.zeros.expand(b, -1, -1)  # the original's dropped / absent condition
            self._check("cond", cond, b)
            h = torch.cat([x_t, cond.to(x_t.dtype)], dim=1)  # b 2c l
        elif cond is not None:
            raise ValueError("TriplaneUNet: got a cond tensor but the model was built with cond=False")
        else:
            h = x_t

        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels).to(x_t.dtype))  # b e
        emb2 = torch.cat([emb, emb], dim=0)  # 2b e: for the stacked yt|xt planes
        xy, tp = self._split(h, self.cfg.latent_side, self.cfg.latent_frames)

        skips = []
        for i, (block, attn) in enumerate(zip(self.input_blocks, self.input_attns, strict=True)):
            xy, tp = block(xy, emb), block(tp, emb2)
            if i == 0 and self.cfg.position_embedding:
                xy = xy + self.pos_xy.to(xy.dtype)
                tp = tp + self.pos_tp.to(tp.dtype).repeat_interleave(b, dim=0)  # rows: b x yt, then b x xt
            xy, tp = self._joint_attention(attn, xy, tp)
            skips.append((xy, tp))
        xy, tp = self._joint_attention(self.mid_attn, self.middle_block(xy, emb), self.middle_block(tp, emb2))
        for block, attn in zip(self.output_blocks, self.output_attns, strict=True):
            skip_xy, skip_tp = skips.pop()
            xy = block(torch.cat([xy, skip_xy], dim=1), emb)
            tp = block(torch.cat([tp, skip_tp], dim=1), emb2)
            xy, tp = self._joint_attention(attn, xy, tp)
        return self._join(self.out(xy), self.out(tp)).to(x_t.dtype)  # b c l
