"""LP-ASRN generator: RRDB-EA trunk, multi-scale character attention, x2 PixelShuffle, bicubic skip.

    lr -> conv_first -> [RRDB-EA] x num_blocks -> conv_trunk (+ long skip) -> MSCA
       -> (conv, PixelShuffle(2), LeakyReLU) x log2(scale) -> conv_last  (+ bicubic(lr))

conv_last starts small, so at initialisation G(lr) is close to the bicubic upsample of lr and training
learns the residual. Any batch size and LR size works as long as H and W are divisible by the
coarsest MSCA pooling factor (4 for the default scales 1, 0.5, 0.25).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lpasrn.models.dcn import DeformConv2d

RESIDUAL_SCALE = 0.2  # ESRGAN's residual scaling inside dense blocks and RRDBs


def _scale_init(module: nn.Module, scale: float) -> None:
    """Kaiming-normal init scaled down (ESRGAN's default_init_weights) so deep trunks start stable."""
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d):
            nn.init.kaiming_normal_(conv.weight)
            conv.weight.data.mul_(scale)
            nn.init.zeros_(conv.bias)


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs (each sees all earlier features), scaled residual."""

    def __init__(self, channels: int, growth: int):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(channels + i * growth, growth if i < 4 else channels, 3, padding=1) for i in range(5))
        _scale_init(self, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = x
        for conv in self.convs[:-1]:
            features = torch.cat((features, F.leaky_relu(conv(features), 0.2, inplace=True)), dim=1)
        return torch.addcmul(x, self.convs[-1](features), torch.tensor(RESIDUAL_SCALE, dtype=x.dtype))


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: global average -> bottleneck MLP (1x1 convs) -> sigmoid gate per channel."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(channels // reduction, 2)
        self.squeeze = nn.Conv2d(channels, hidden, 1)
        self.excite = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.excite(F.relu(self.squeeze(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class SpatialAttention(nn.Module):
    """CBAM spatial gate: channel mean and max -> 7x7 conv -> sigmoid gate per position."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        summary = torch.cat((x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)), dim=1)
        return x * torch.sigmoid(self.conv(summary))


class RRDBEA(nn.Module):
    """Residual-in-residual dense block with enhanced attention: RDBs -> channel and spatial
    attention -> one deformable conv (lets the block follow slanted, shifted characters)."""

    def __init__(self, channels: int, growth: int, dense_blocks: int = 3, dcn_groups: int = 4,
                 use_dcnv4: bool = True):
        super().__init__()
        self.dense_blocks = nn.Sequential(*(ResidualDenseBlock(channels, growth) for _ in range(dense_blocks)))
        self.channel_attention = ChannelAttention(channels)
        self.spatial_attention = SpatialAttention()
        self.deform_conv = DeformConv2d(channels, 3, padding=1, groups=dcn_groups, use_dcnv4=use_dcnv4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.spatial_attention(self.channel_attention(self.dense_blocks(x)))
        return torch.addcmul(x, self.deform_conv(out), torch.tensor(RESIDUAL_SCALE, dtype=x.dtype))


def pool_factors(scales) -> tuple[int, ...]:
    """Average-pool factor of each MSCA scale (1.0 -> 1, 0.5 -> 2, 0.25 -> 4); scales must be 1/n."""
    factors = []
    for scale in scales:
        factor = round(1.0 / scale) if scale > 0 else 0
        if factor < 1 or abs(factor * scale - 1.0) > 1e-6:
            raise ValueError(f"MSCA scale {scale} is not 1/n for a positive integer n")
        factors.append(factor)
    return tuple(factors)


class MultiScaleCharacterAttention(nn.Module):
    """Attention from the feature seen at several scales (character strokes at 1, whole characters at
    0.5, character groups at 0.25): per scale avg-pool -> 3x3 conv -> upsample; concat -> 1x1 conv ->
    sigmoid gate multiplying the features."""

    def __init__(self, channels: int, scales=(1.0, 0.5, 0.25), hidden: int | None = None):
        super().__init__()
        self.scales = tuple(float(s) for s in scales)
        self.factors = pool_factors(self.scales)
        hidden = hidden or max(channels // 4, 4)
        self.branches = nn.ModuleList(nn.Conv2d(channels, hidden, 3, padding=1) for _ in self.factors)
        self.fuse = nn.Conv2d(hidden * len(self.factors), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        maps = []
        for factor, branch in zip(self.factors, self.branches):
            pooled = F.avg_pool2d(x, factor) if factor > 1 else x
            attention = F.leaky_relu(branch(pooled), 0.2)
            if factor > 1:
                attention = F.interpolate(attention, size=size, mode="bilinear", align_corners=False)
            maps.append(attention)
        return x * torch.sigmoid(self.fuse(torch.cat(maps, dim=1)))

    def extra_repr(self) -> str:
        return f"scales={self.scales}"


class Generator(nn.Module):
    """The LP-ASRN super-resolution generator (see the module docstring)."""

    def __init__(self, num_channels: int = 64, num_blocks: int = 12, growth: int = 32, use_dcnv4: bool = True,
                 use_character_attention: bool = True, msca_scales=(1.0, 0.5, 0.25), scale: int = 2,
                 dense_blocks_per_block: int = 3, dcn_groups: int = 4, last_init_scale: float = 0.01,
                 clamp_output: bool = False):
        super().__init__()
        # The output is an image: clamped to [0, 1] here so that every reader (validation, losses,
        # evaluation, export) sees the same pixels; unclamped, validation picked the best model on
        # values that evaluation then clipped.
        self.clamp_output = clamp_output
        if scale < 2 or scale & (scale - 1):
            raise ValueError(f"scale must be a power of two >= 2, got {scale}")
        self.scale = scale
        self.use_character_attention = use_character_attention
        self.msca_scales = tuple(msca_scales) if use_character_attention else ()
        self.size_multiple = max(pool_factors(self.msca_scales), default=1)
        self.conv_first = nn.Conv2d(3, num_channels, 3, padding=1)
        self.trunk = nn.Sequential(*(
            RRDBEA(num_channels, growth, dense_blocks_per_block, dcn_groups, use_dcnv4) for _ in range(num_blocks)))
        self.conv_trunk = nn.Conv2d(num_channels, num_channels, 3, padding=1)
        self.character_attention = (MultiScaleCharacterAttention(num_channels, msca_scales)
                                    if use_character_attention else None)
        upsample = []
        for _ in range(int(math.log2(scale))):
            upsample += [nn.Conv2d(num_channels, 4 * num_channels, 3, padding=1), nn.PixelShuffle(2),
                         nn.LeakyReLU(0.2, inplace=True)]
        self.upsample = nn.Sequential(*upsample)
        self.conv_last = nn.Conv2d(num_channels, 3, 3, padding=1)
        # Small reconstruction weights: output starts near the bicubic skip, yet gradients reach the
        # trunk from the first step (a zero conv would block them until it moves).
        _scale_init(self.conv_last, last_init_scale)

    def check_input(self, lr: torch.Tensor) -> None:
        if lr.dim() != 4 or lr.shape[1] != 3:
            raise ValueError(f"Generator expects (B, 3, H, W) images, got shape {tuple(lr.shape)}")
        height, width = lr.shape[-2:]
        if height % self.size_multiple or width % self.size_multiple:
            raise ValueError(f"LR size {height}x{width} must be divisible by {self.size_multiple} "
                             f"(the coarsest MSCA scale {min(self.msca_scales)})")

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        self.check_input(lr)
        # channels_last: oneDNN convolutions with few channels on 16x48 maps run several times
        # faster than in NCHW (measured on this CPU, see BENCHMARKS.md), and the deformable conv emits it.
        features = self.conv_first(lr.contiguous(memory_format=torch.channels_last))
        features = features + self.conv_trunk(self.trunk(features))
        if self.character_attention is not None:
            features = self.character_attention(features)
        residual = self.conv_last(self.upsample(features))
        bicubic = F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False)
        sr = bicubic + residual
        return sr.clamp(0.0, 1.0) if self.clamp_output else sr


GENERATOR_PRESETS = {
    "paper": dict(num_channels=64, num_blocks=12, growth=32),
    # Sized like the public reimplementation (DESIGN.md section 8) at the same channels x blocks:
    # growth 16 and two dense blocks per RRDB-EA give 0.59 M params / 2.8 train GFLOP per sample at
    # 32x4 (reference 0.72 M / 2.7) and 4.9 M / 23 GFLOP at 64x16 (reference 5.7 M / 23.8).
    "small": dict(num_channels=32, num_blocks=4, growth=16, dense_blocks_per_block=2),
    # A few thousand parameters: every component present (DCN, attention, MSCA), for CPU tests.
    "tiny": dict(num_channels=8, num_blocks=1, growth=4, dense_blocks_per_block=1, dcn_groups=2),
}


def build_generator(preset: str, **overrides) -> Generator:
    """Generator from a named preset; keyword overrides replace preset values."""
    if preset not in GENERATOR_PRESETS:
        raise ValueError(f"unknown generator preset {preset!r}; presets: {', '.join(GENERATOR_PRESETS)}")
    return Generator(**{**GENERATOR_PRESETS[preset], **overrides})
