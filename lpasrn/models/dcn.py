"""Modulated deformable convolution: DCNv4 kernel on CUDA, one-grid_sample DCNv3 path elsewhere.

Semantics (both paths, and `deform_conv_reference`): for output position p, kernel tap k at base
position p - padding + (row_k, col_k), offset group g (a contiguous block of in_channels/groups input
channels) samples its channels bilinearly at base + offset[g, k](p), zero outside the image, scales
by mask[g, k](p), and the full conv weight (out, in, kh, kw) folds channels and taps:
    out[o, p] = bias[o] + sum_{c, k} weight[o, c, k] * mask[g(c), k](p) * x_c(base_k(p) + offset[g(c), k](p))
With zero offsets and mask 1 this is exactly F.conv2d(x, weight, bias, padding=padding).

Tensor layouts shared by the sampling functions:
- offsets: (B, groups * 2 * K, H_out, W_out), channel order (group, axis, tap), axis 0 = dy (rows),
  axis 1 = dx (columns), tap k = i * kw + j (row-major, like the weight).
- masks: (B, groups * K, H_out, W_out), channel order (group, tap).
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

# Messages already logged, so the implementation choice is reported once per distinct reason.
_LOGGED_CHOICES: set[str] = set()
# None = not tried yet; False = import failed (reason in _DCNV4_IMPORT_ERROR); else the Function.
_DCNV4_FUNCTION = None
_DCNV4_IMPORT_ERROR = ""


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


def _tap_positions(kernel_size: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of each tap, row-major, as float tensors of shape (K,)."""
    taps = torch.arange(kernel_size, device=device, dtype=dtype)
    return taps.repeat_interleave(kernel_size), taps.repeat(kernel_size)


def deform_conv_dcnv3(x: torch.Tensor, offsets: torch.Tensor, masks: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None, padding: int, groups: int) -> torch.Tensor:
    """Pure-PyTorch modulated deformable conv (stride 1, dilation 1): one grid_sample, one matmul.

    All groups and taps are sampled by a single grid_sample over (B*groups, C/groups, H, W) with a
    grid of (B*groups, K, H_out*W_out); its output (B*groups, C/groups, K, HW) is already the im2col
    matrix in the weight's (channel, tap) order, so the taps fold by one batched matmul without any
    permute copy (the costs a public reimplementation pays, DESIGN.md section 8).
    """
    batch, channels, height, width = x.shape
    out_channels, _, kernel_size, _ = weight.shape
    taps = kernel_size * kernel_size
    height_out, width_out = offsets.shape[-2:]
    positions = height_out * width_out
    grid = _sampling_grid(offsets.reshape(batch, groups, 2, taps, height_out, width_out), kernel_size,
                          padding, height, width).view(batch * groups, taps, positions, 2)
    value = x.reshape(batch * groups, channels // groups, height, width)
    sampled = F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    columns = sampled * masks.reshape(batch * groups, 1, taps, positions)
    # Explicit bmm of (out, C*K) by (C*K, HW) per sample: torch.matmul(2-D, 3-D) folds the batch by
    # transposing the columns, a full copy of them in forward and another of their gradient in
    # backward (measured 8% of the 32x4 step). Here the columns and their gradient keep the
    # grid_sample layout; only the small weight is expanded (a stride-0 view) and its gradient summed.
    weight_batched = weight.reshape(1, out_channels, channels * taps).expand(batch, -1, -1)
    flat = columns.view(batch, channels * taps, positions)
    if bias is None:
        out = torch.bmm(weight_batched, flat)
    else:
        out = torch.baddbmm(bias.view(1, out_channels, 1).expand(batch, -1, positions), weight_batched, flat)
    out = out.view(batch, out_channels, height_out, width_out)
    if x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last):
        # Keep the caller's layout: oneDNN convolutions after this are much slower in NCHW. This
        # copy is the size of the output, 1/K of the columns an NHWC product would copy in backward.
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def _sampling_grid(offsets: torch.Tensor, kernel_size: int, padding: int, height: int,
                   width: int) -> torch.Tensor:
    """grid_sample grid (B, G, K, H_out, W_out, 2) of (x, y) for offsets (B, G, 2, K, H_out, W_out).

    Pixel index i maps to (2 i + 1) / size - 1 for align_corners=False, so an offset d moves the
    grid by 2 d / size. unbind (not indexing) splits the axes: its backward is one stack, where
    indexing would zero-fill and copy a full offset gradient per axis.
    """
    height_out, width_out = offsets.shape[-2:]
    dtype, device = offsets.dtype, offsets.device
    rows, cols = _tap_positions(kernel_size, device, dtype)
    out_rows = torch.arange(height_out, device=device, dtype=dtype)
    out_cols = torch.arange(width_out, device=device, dtype=dtype)
    base_y = (rows[:, None, None] + out_rows[None, :, None] - padding) * (2.0 / height) + (1.0 / height - 1.0)
    base_x = (cols[:, None, None] + out_cols[None, None, :] - padding) * (2.0 / width) + (1.0 / width - 1.0)
    offset_y, offset_x = offsets.unbind(2)
    grid_y = torch.addcmul(base_y, offset_y, torch.tensor(2.0 / height, dtype=dtype, device=device))
    grid_x = torch.addcmul(base_x, offset_x, torch.tensor(2.0 / width, dtype=dtype, device=device))
    return torch.stack((grid_x, grid_y), dim=-1)


def _dcnv4_pack(x: torch.Tensor, offsets: torch.Tensor, masks: torch.Tensor, kernel_size: int,
                groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs for DCNv4Function that make its kernel produce the modulated im2col columns.

    DCNv4 sums a group's taps before any channel mixing, but a full conv weight needs each tap
    separately. So the input is replicated once per tap (groups * K DCNv4 groups, channels-last),
    and DCNv4 group (g, k) gets a one-hot mask selecting its own tap. DCNv4's offset_mask layout per
    pixel and group is K (dx, dy) pairs, then K mask values, taps column-major (w outer, h inner),
    padded to a multiple of 8 channels.
    """
    batch, channels, height, width = x.shape
    taps = kernel_size * kernel_size
    group_channels = channels // groups
    value = (x.view(batch, groups, 1, group_channels, height, width)
             .expand(batch, groups, taps, group_channels, height, width)
             .permute(0, 4, 5, 1, 2, 3).reshape(batch, height, width, groups * taps * group_channels))
    height_out, width_out = offsets.shape[-2:]
    tap_index = torch.arange(taps, device=x.device)
    dcnv4_tap = (tap_index % kernel_size) * kernel_size + tap_index // kernel_size
    one_hot = F.one_hot(dcnv4_tap, taps).to(x.dtype)  # (K own tap, K DCNv4 tap)
    offsets = offsets.reshape(batch, groups, 2, taps, height_out, width_out).permute(0, 4, 5, 1, 3, 2)
    masks = masks.reshape(batch, groups, taps, height_out, width_out).permute(0, 3, 4, 1, 2)
    dy = offsets[..., 0, None] * one_hot
    dx = offsets[..., 1, None] * one_hot
    pairs = torch.stack((dx, dy), dim=-1).flatten(-2)  # (B, H, W, G, K, 2K)
    packed = torch.cat((pairs, masks[..., None] * one_hot), dim=-1)
    packed = packed.reshape(batch, height_out, width_out, groups * taps * 3 * taps)
    padded = math.ceil(packed.shape[-1] / 8) * 8
    return value, F.pad(packed, (0, padded - packed.shape[-1])).contiguous()


def deform_conv_dcnv4(x, offsets, masks, weight, bias, padding: int, groups: int) -> torch.Tensor:
    """Same result as deform_conv_dcnv3, sampled by the DCNv4 CUDA kernel (3x3 kernels only)."""
    function = _load_dcnv4_function()
    batch, channels, height, width = x.shape
    out_channels, _, kernel_size, _ = weight.shape
    taps = kernel_size * kernel_size
    group_channels = channels // groups
    value, offset_mask = _dcnv4_pack(x, offsets, masks, kernel_size, groups)
    columns = function.apply(value, offset_mask, kernel_size, kernel_size, 1, 1, padding, padding, 1, 1,
                             groups * taps, group_channels, 1.0, batch, 0)
    height_out, width_out = columns.shape[1:3]
    # Columns are ordered (group, tap, channel-in-group); reorder the (small) weight to match.
    weight_cols = weight.view(out_channels, groups, group_channels, taps).transpose(2, 3)
    out = columns.reshape(batch, height_out * width_out, -1) @ weight_cols.reshape(out_channels, -1).t()
    if bias is not None:
        out = out + bias
    return out.view(batch, height_out, width_out, out_channels).permute(0, 3, 1, 2)


def dcnv4_unavailable_reason(x: torch.Tensor, kernel_size: int, group_channels: int) -> str | None:
    """Why the DCNv4 kernel cannot run this input, or None when it can."""
    if not x.is_cuda:
        return f"input on {x.device.type}"
    if _load_dcnv4_function() is None:
        return _DCNV4_IMPORT_ERROR
    if kernel_size != 3:
        return f"kernel_size {kernel_size} (the DCNv4 kernel supports 3x3 only)"
    if group_channels % 8 != 0:
        return f"{group_channels} channels per group (the DCNv4 kernel needs a multiple of 8)"
    return None


class DeformConv2d(nn.Module):
    """Deformable conv predicting its own offsets and modulation masks (stride 1, dilation 1).

    Offsets and masks come from a depthwise 3x3 conv (`offset_dw`, for spatial context) and a
    zero-initialised 1x1 conv (`conv_offset_mask`) to groups*2*K offsets and groups*K mask logits, as
    DCNv4's module does: a full 3x3 conv to 3*groups*K channels would cost more than the deformable
    conv itself. The mask is 2*sigmoid(logit), so at initialisation offsets are 0, masks are 1 and the layer is
    exactly an ordinary conv with `weight` and `bias`. `use_dcnv4` only allows the DCNv4 kernel
    (CUDA, dcnv4 installed); parameters and state-dict keys are the same either way.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1,
                 groups: int = 4, use_dcnv4: bool = True):
        super().__init__()
        if in_channels % groups != 0:
            raise ValueError(f"in_channels {in_channels} is not divisible by groups {groups}")
        if kernel_size != 2 * padding + 1:
            raise ValueError("DeformConv2d keeps the spatial size: kernel_size must equal 2 * padding + 1")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.padding, self.groups = kernel_size, padding, groups
        self.use_dcnv4 = use_dcnv4
        taps = kernel_size * kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default
        self.offset_dw = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels)
        self.conv_offset_mask = nn.Conv2d(in_channels, groups * 3 * taps, 1)
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)

    def offsets_and_masks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        predicted = self.conv_offset_mask(self.offset_dw(x))
        taps = self.kernel_size ** 2
        # split (not slicing): its backward is one concatenation instead of two zero-filled copies.
        offsets, logits = predicted.split([self.groups * 2 * taps, self.groups * taps], dim=1)
        return offsets, 2.0 * torch.sigmoid(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offsets, masks = self.offsets_and_masks(x)
        reason = "use_dcnv4=False"
        if self.use_dcnv4:
            reason = dcnv4_unavailable_reason(x, self.kernel_size, self.in_channels // self.groups)
        if reason is None:
            _log_choice_once("DeformConv2d: using the DCNv4 CUDA kernel")
            return deform_conv_dcnv4(x, offsets, masks, self.weight, self.bias, self.padding, self.groups)
        _log_choice_once(f"DeformConv2d: using the pure-PyTorch DCNv3 path ({reason})")
        return deform_conv_dcnv3(x, offsets, masks, self.weight, self.bias, self.padding, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"padding={self.padding}, groups={self.groups}, use_dcnv4={self.use_dcnv4}")


def _bilinear_at(image: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """Bilinear value of image (C, H, W) at pixel (y, x); corners outside the image count as 0."""
    height, width = image.shape[-2:]
    y0, x0 = math.floor(y), math.floor(x)
    value = image.new_zeros(image.shape[0])
    for corner_y, weight_y in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for corner_x, weight_x in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= corner_y < height and 0 <= corner_x < width:
                value = value + weight_y * weight_x * image[:, corner_y, corner_x]
    return value


def deform_conv_reference(x: torch.Tensor, offsets: torch.Tensor, masks: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor | None = None, padding: int = 1, groups: int = 1) -> torch.Tensor:
    """Direct loop over batch, output position, group and tap of the formula in the module docstring.

    Slow and for tests only; shares no code with the fast paths except the documented layouts.
    """
    batch, channels, _, _ = x.shape
    out_channels, _, kernel_size, _ = weight.shape
    taps = kernel_size * kernel_size
    group_channels = channels // groups
    height_out, width_out = offsets.shape[-2:]
    offsets = offsets.reshape(batch, groups, 2, taps, height_out, width_out)
    masks = masks.reshape(batch, groups, taps, height_out, width_out)
    out = x.new_zeros(batch, out_channels, height_out, width_out)
    for b in range(batch):
        for h in range(height_out):
            for w in range(width_out):
                total = x.new_zeros(out_channels) if bias is None else bias.clone()
                for g in range(groups):
                    channel_slice = slice(g * group_channels, (g + 1) * group_channels)
                    for k in range(taps):
                        i, j = divmod(k, kernel_size)
                        y = h - padding + i + float(offsets[b, g, 0, k, h, w])
                        x_pos = w - padding + j + float(offsets[b, g, 1, k, h, w])
                        sample = _bilinear_at(x[b, channel_slice], y, x_pos) * masks[b, g, k, h, w]
                        total = total + weight[:, channel_slice, i, j] @ sample
                out[b, :, h, w] = total
    return out
