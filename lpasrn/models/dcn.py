"""Deformable convolution with DCNv4's function: the `dcnv4` CUDA op when it can run, pure PyTorch elsewhere.

DCNv4 (OpenGVLab, "Efficient Deformable ConvNets", 2024) per output pixel:
    value       = value_proj(x)                                   (1x1, C -> C)
    offset_mask = offset_mask(offset_mask_dw(x))                  (depthwise 3x3, then 1x1 C -> P)
    agg[g]      = sum_t mask[g, t] * bilinear(value[g], tap_t + offset[g, t])   (per group of D channels)
    out         = output_proj(agg)                                (1x1, C -> C)
The mask is unnormalised (no softmax, no sigmoid), the taps of a group share no weight: channel
mixing happens only in the two projections. Sampling positions and the offset_mask channel layout
are those of the DCNv4 kernel (lpasrn.models.dcn_torch's docstring); P = G * 3 * K rounded up to a
multiple of 8, as the kernel requires.

One state dict for both paths (value_proj, offset_mask_dw, offset_mask, output_proj; DCNv4's own
module names). On CUDA with `dcnv4` installed, the op is called as its authors' module calls it:
channels-last value and offset_mask, group / group_channels / offset_scale, remove_center 0. The
op runs in fp32 with autocast off: its bf16 backward fails (OpenGVLab/DCNv4 issues 15 and 24) and
in bf16 the sampling positions would be quantised; the projections still follow autocast.
"""
from __future__ import annotations

import logging
import math

import torch
from torch import nn

from lpasrn.models.dcn_torch import dcnv4_torch

logger = logging.getLogger(__name__)

# Messages already logged, so each choice (path, precision) is reported once per distinct reason.
_LOGGED_CHOICES: set[str] = set()
# None = not tried yet; False = import failed (reason in _DCNV4_IMPORT_ERROR); else the Function.
_DCNV4_FUNCTION = None
_DCNV4_IMPORT_ERROR = ""
FP32_NOTE = ("DeformConv2d: the sampling op runs in fp32 with autocast off (DCNv4's bf16 backward fails, "
             "OpenGVLab/DCNv4 issues 15 and 24; bf16 positions are quantised); projections follow autocast")


def _log_choice_once(message: str) -> None:
    if message not in _LOGGED_CHOICES:
        _LOGGED_CHOICES.add(message)
        logger.info(message)


def _load_dcnv4_function():
    """DCNv4's autograd Function, or None (the import error is remembered for the log line)."""
    global _DCNV4_FUNCTION, _DCNV4_IMPORT_ERROR
    if _DCNV4_FUNCTION is None:
        try:
            from DCNv4.functions import DCNv4Function
            _DCNV4_FUNCTION = DCNv4Function
        except Exception as err:  # ImportError, or the CUDA extension failing to load
            _DCNV4_FUNCTION = False
            _DCNV4_IMPORT_ERROR = f"dcnv4 not installed or not loadable ({type(err).__name__}: {err})"
    return _DCNV4_FUNCTION or None


def padded_offset_channels(groups: int, taps: int) -> int:
    """offset_mask width: (dx, dy, mask) per group and tap, padded to a multiple of 8 (kernel requirement)."""
    return math.ceil(groups * taps * 3 / 8) * 8


def _project_channels_first(rows: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """linear over the channels of (B, Q, C_in) rows, returned channel-first (B, C_out, Q) contiguous.

    One baddbmm reading the rows transposed: no layout copy of the input or of the result.
    """
    batch = rows.shape[0]
    weight = linear.weight.unsqueeze(0).expand(batch, -1, -1)
    bias = linear.bias.view(1, -1, 1).expand(batch, -1, rows.shape[1])
    return torch.baddbmm(bias, weight, rows.transpose(1, 2))


class DeformConv2d(nn.Module):
    """DCNv4 layer on (B, C, H, W) maps, C -> C, spatial size kept (stride 1, dilation 1).

    At initialisation offsets are 0 and every mask is 1/K, so the aggregation is a 3x3 box filter
    per channel between the two projections and every parameter gets a gradient from the first step
    (DCNv4's own init zeroes the masks, which leaves the offsets without gradient until they grow).
    `use_dcnv4` only allows the CUDA op; parameters and state-dict keys are the same either way.
    """

    def __init__(self, channels: int, kernel_size: int = 3, padding: int = 1, groups: int = 4,
                 offset_scale: float = 1.0, dw_kernel_size: int = 3, use_dcnv4: bool = True):
        super().__init__()
        if channels % groups != 0:
            raise ValueError(f"channels {channels} is not divisible by groups {groups}")
        if kernel_size != 2 * padding + 1:
            raise ValueError("DeformConv2d keeps the spatial size: kernel_size must equal 2 * padding + 1")
        self.channels, self.kernel_size, self.padding, self.groups = channels, kernel_size, padding, groups
        self.group_channels = channels // groups
        self.offset_scale, self.use_dcnv4 = float(offset_scale), use_dcnv4
        taps = kernel_size * kernel_size
        self.value_proj = nn.Linear(channels, channels)
        self.offset_mask_dw = nn.Conv2d(channels, channels, dw_kernel_size, padding=dw_kernel_size // 2,
                                        groups=channels)
        self.offset_mask = nn.Linear(channels, padded_offset_channels(groups, taps))
        self.output_proj = nn.Linear(channels, channels)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)
        nn.init.zeros_(self.offset_mask.weight)
        with torch.no_grad():
            self.offset_mask.bias.zero_()
            self.offset_mask.bias[:groups * 3 * taps].view(groups, 3 * taps)[:, 2 * taps:] = 1.0 / taps

    def dcnv4_args(self, batch: int) -> tuple:
        """Positional arguments of DCNv4Function after (value, offset_mask), as DCNv4's module passes them.

        im2col_step = batch: the kernel needs batch % im2col_step == 0, and its launch shape is tuned
        for the whole batch (findspec), so one chunk is the only step valid for every batch size.
        """
        k, pad = self.kernel_size, self.padding
        return (k, k, 1, 1, pad, pad, 1, 1, self.groups, self.group_channels, self.offset_scale, batch, 0)

    def dcnv4_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Channels-last (B, H, W, C) value and (B, H, W, P) offset_mask, the DCNv4 op's inputs."""
        value = self.value_proj(x.permute(0, 2, 3, 1))
        offset_mask = self.offset_mask(self.offset_mask_dw(x).permute(0, 2, 3, 1))
        return value, offset_mask

    def dcnv4_unavailable_reason(self, x: torch.Tensor) -> str | None:
        """Why the DCNv4 CUDA op cannot run this input, or None when it can."""
        if not self.use_dcnv4:
            return "use_dcnv4=False"
        if not x.is_cuda:
            return f"input on {x.device.type}"
        if _load_dcnv4_function() is None:
            return _DCNV4_IMPORT_ERROR
        if self.kernel_size != 3:
            return f"kernel_size {self.kernel_size} (the DCNv4 kernel supports 3x3 only)"
        if self.group_channels % 8 != 0:
            return f"{self.group_channels} channels per group (the DCNv4 kernel needs a multiple of 8)"
        return None

    def _forward_dcnv4(self, x: torch.Tensor) -> torch.Tensor:
        value, offset_mask = self.dcnv4_inputs(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = _load_dcnv4_function().apply(value.float().contiguous(), offset_mask.float().contiguous(),
                                               *self.dcnv4_args(x.shape[0]))
        return self.output_proj(out.to(value.dtype)).permute(0, 3, 1, 2)

    def _forward_torch(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        # (B, H*W, C) rows: a view for the generator's channels_last maps.
        value = _project_channels_first(x.permute(0, 2, 3, 1).reshape(batch, -1, channels), self.value_proj)
        offset_rows = self.offset_mask_dw(x).permute(0, 2, 3, 1).reshape(batch, -1, channels)
        offset_mask = _project_channels_first(offset_rows, self.offset_mask)
        with torch.autocast(device_type=x.device.type, enabled=False):
            compute = torch.float64 if value.dtype == torch.float64 else torch.float32
            out = dcnv4_torch(value.view(batch, channels, height, width).to(compute),
                              offset_mask.view(batch, -1, height, width).to(compute), self.kernel_size,
                              self.kernel_size, 1, self.padding, 1, self.groups, self.group_channels,
                              self.offset_scale)
        rows = out.to(value.dtype).flatten(2).transpose(1, 2)  # (B, Q, C), read transposed by the GEMM
        weight = self.output_proj.weight.t().unsqueeze(0).expand(batch, -1, -1)
        out = torch.baddbmm(self.output_proj.bias, rows, weight)  # (B, Q, C) = channels_last (B, C, H, W)
        return out.view(batch, height, width, channels).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"DeformConv2d({self.channels}) expects (B, {self.channels}, H, W), got {tuple(x.shape)}")
        if x.dtype != torch.float32 or torch.is_autocast_enabled(x.device.type):
            _log_choice_once(FP32_NOTE)
        reason = self.dcnv4_unavailable_reason(x)
        if reason is None:
            _log_choice_once("DeformConv2d: using the DCNv4 CUDA op")
            return self._forward_dcnv4(x)
        _log_choice_once(f"DeformConv2d: using the pure-PyTorch DCNv4 path ({reason})")
        return self._forward_torch(x)

    def extra_repr(self) -> str:
        return (f"{self.channels}, kernel_size={self.kernel_size}, padding={self.padding}, groups={self.groups}, "
                f"offset_scale={self.offset_scale}, use_dcnv4={self.use_dcnv4}")
