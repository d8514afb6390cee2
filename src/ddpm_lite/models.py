"""Noise predictors eps_theta(x_t, t): a time-conditioned MLP for 2-D points and DDPM's UNet for images.

Both take x_t and the code timestep t (int64, 0-based; see `ddpm_lite.schedules`) and return a tensor shaped like
x_t. The UNet follows the DDPM paper's architecture (Ho et al. 2020, appendix B; a PixelCNN++-style UNet with
GroupNorm, sinusoidal time embedding added in every residual block, self-attention at chosen resolutions), so its
CIFAR-10 configuration has the paper's 35.7 M parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of timesteps (Transformer positions, as in DDPM's code). t: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


# ------------------------------------------------------------------------------------------- MLP for 2-D data


@dataclass(frozen=True)
class MLPConfig:
    data_dim: int = 2  # dimension D of the points
    hidden: int = 128  # width of every hidden layer
    depth: int = 3  # number of hidden residual blocks
    time_dim: int = 64  # width of the sinusoidal time embedding
    learn_variance: bool = False  # also output Improved DDPM's variance interpolation v (2 D outputs; objectives.py)


class MLP(nn.Module):
    """eps_theta for points: x_t (B, D), t (B,) int64 -> (B, D), or (B, 2 D) with learn_variance. Residual MLP; the
    time embedding enters each block."""

    def __init__(self, config: MLPConfig = MLPConfig()):
        super().__init__()
        self.config = config
        h = config.hidden
        self.time = nn.Sequential(nn.Linear(config.time_dim, h), nn.SiLU(), nn.Linear(h, h))
        self.inp = nn.Linear(config.data_dim, h)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, h))
            for _ in range(config.depth)
        )
        outputs = config.data_dim * (2 if config.learn_variance else 1)
        self.out = nn.Sequential(nn.LayerNorm(h), nn.SiLU(), nn.Linear(h, outputs))

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        emb = self.time(timestep_embedding(t, self.config.time_dim))
        h = self.inp(x_t)
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h)


# ------------------------------------------------------------------------------------------- UNet for images


@dataclass(frozen=True)
class UNetConfig:
    image_channels: int = 1  # 1 for MNIST, 3 for CIFAR-10
    image_size: int = 28  # height = width; must be divisible by 2 ** (len(channel_mults) - 1)
    base_channels: int = 32  # channels at full resolution (DDPM CIFAR-10: 128)
    channel_mults: tuple[int, ...] = (1, 2, 2)  # channels per resolution level = base * mult; 28 -> 14 -> 7
    num_res_blocks: int = 2  # residual blocks per level on the way down (one more on the way up)
    attention_resolutions: tuple[int, ...] = (7,)  # side lengths at which to add self-attention
    dropout: float = 0.0  # inside residual blocks (DDPM CIFAR-10: 0.1)
    groups: int = 8  # GroupNorm groups (DDPM: 32)
    num_classes: int = 0  # 0: unconditional; n > 0: labels 0..n-1 plus label n = "no label" (classifier-free guidance)
    learn_variance: bool = False  # also output Improved DDPM's variance interpolation v (twice the channels; objectives.py)

    def __post_init__(self) -> None:
        levels = len(self.channel_mults)
        if self.image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size must be divisible by 2**{levels - 1}, got {self.image_size}")
        for mult in self.channel_mults:
            if (self.base_channels * mult) % self.groups:
                raise ValueError(f"base_channels * mult must be divisible by groups={self.groups}, got {mult}")


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, plus the projected time embedding, then GroupNorm -> SiLU -> dropout -> conv."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual connection. (B, C, H, W) -> same."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)  # each (B, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """eps_theta for images: x_t (B, C, H, W), t (B,) int64 [, y (B,) int64] -> (B, C, H, W), or (B, 2 C, H, W) with
    learn_variance.

    With `config.num_classes = n > 0` the network is class-conditional: a learned embedding of the label y is added to
    the time embedding (as the time embedding enters every ResBlock, so does the label). Label n (`null_label`) means
    "no label"; it is what `y=None` uses. Training with some labels replaced by n gives one network that is both
    conditional and unconditional, as classifier-free guidance needs (Ho & Salimans 2022, Algorithm 1).

    Down path: per level, `num_res_blocks` ResBlocks (+ attention at the listed resolutions), then a stride-2 conv.
    Middle: ResBlock, attention, ResBlock. Up path: per level, `num_res_blocks + 1` ResBlocks, each fed the
    matching down-path activation (the skip connections), then nearest-neighbour upsampling and a conv.
    """

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = config
        ch, groups = config.base_channels, config.groups
        emb_dim = 4 * ch
        self.time = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.null_label = config.num_classes
        self.label = nn.Embedding(config.num_classes + 1, emb_dim) if config.num_classes else None
        self.inp = nn.Conv2d(config.image_channels, ch, 3, padding=1)

        def block(c_in: int, c_out: int, size: int) -> nn.ModuleList:
            layers = [ResBlock(c_in, c_out, emb_dim, config.dropout, groups)]
            if size in config.attention_resolutions:
                layers.append(SelfAttention(c_out, groups))
            return nn.ModuleList(layers)

        self.down, skip_channels, c, size = nn.ModuleList(), [ch], ch, config.image_size
        for level, mult in enumerate(config.channel_mults):
            for _ in range(config.num_res_blocks):
                self.down.append(block(c, ch * mult, size))
                c = ch * mult
                skip_channels.append(c)
            if level < len(config.channel_mults) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
                skip_channels.append(c)
                size //= 2
        self.middle = nn.ModuleList([
            ResBlock(c, c, emb_dim, config.dropout, groups), SelfAttention(c, groups),
            ResBlock(c, c, emb_dim, config.dropout, groups),
        ])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mults))):
            for _ in range(config.num_res_blocks + 1):
                self.up.append(block(c + skip_channels.pop(), ch * mult, size))
                c = ch * mult
            if level > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]))
                size *= 2
        outputs = config.image_channels * (2 if config.learn_variance else 1)
        self.out = nn.Sequential(nn.GroupNorm(groups, c), nn.SiLU(), nn.Conv2d(c, outputs, 3, padding=1))

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.time(timestep_embedding(t, self.config.base_channels))
        if self.label is not None:
            if y is None:
                y = torch.full_like(t, self.null_label)
            elif y.shape != t.shape or y.dtype != torch.int64 or ((y < 0) | (y > self.null_label)).any():
                raise ValueError(f"y must be int64 labels shaped like t {tuple(t.shape)} in [0, {self.null_label}] "
                                 f"({self.null_label} = no label), got {y.dtype} {tuple(y.shape)}")
            emb = emb + self.label(y)
        elif y is not None:
            raise ValueError("y was given but this UNet is unconditional (config.num_classes = 0)")
        h = self.inp(x_t)
        skips = [h]
        for layers in self.down:
            h = _apply(layers, h, emb)
            skips.append(h)
        h = _apply(self.middle, h, emb)
        for layers in self.up:
            if isinstance(layers[0], ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = _apply(layers, h, emb)
        return self.out(h)


def _apply(layers: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
    for layer in layers:
        h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
    return h


def make_model(config: MLPConfig | UNetConfig) -> nn.Module:
    """The network a config describes: `MLP` for an `MLPConfig`, `UNet` for a `UNetConfig`."""
    if isinstance(config, MLPConfig):
        return MLP(config)
    if isinstance(config, UNetConfig):
        return UNet(config)
    raise ValueError(f"config must be an MLPConfig or a UNetConfig, got {type(config).__name__}")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
