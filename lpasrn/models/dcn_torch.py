"""DCNv4's sampling-and-aggregation op in pure PyTorch (any device), same function as the CUDA kernel.

For output pixel (ho, wo), group g and tap t of a kh x kw kernel, DCNv4's kernel samples the group's
D channels bilinearly (corners outside the image count as 0) at
    w_im = wo * stride - pad + (kw - 1) * dil / 2 + s * (i * dil - (kw - 1) * dil / 2 + dx[g, t])
    h_im = ho * stride - pad + (kh - 1) * dil / 2 + s * (j * dil - (kh - 1) * dil / 2 + dy[g, t])
(s = offset_scale; with s = 1 this is the plain tap position plus the offset) and sums the samples
weighted by the unnormalised mask m[g, t]. Taps are column-major: t = i * kh + j, i the column.
offset_mask channels of group g: [g*3K, g*3K + 2K) hold (dx, dy) pairs per tap, [g*3K + 2K, g*3K + 3K)
the K masks; channels after G*3K (padding to a multiple of 8) are unused.

Layouts here are channel-first (the CPU-friendly side): value (B, G*D, H, W) NCHW-contiguous,
offset_mask (B, P, H_out, W_out) NCHW-contiguous, output (B, G*D, H_out, W_out) NCHW-contiguous.
The CUDA op takes the same tensors channels-last (lpasrn.models.dcn).

The whole op is one autograd Function: the mask multiply and the sum over taps run as K fused
multiply-adds over the grid_sample output (no K-times temporary), and backward writes the offset and
mask gradients straight into one offset_mask-shaped tensor. Positions are always built in fp32 (or
fp64 for fp64 inputs): in bf16 a normalised grid coordinate is quantised to ~0.4% of the image size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd import Function

_BASE_GRIDS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_MAX_CACHED_GRIDS = 64


def position_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sampling positions are fp64 for fp64 data (gradcheck) and fp32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def base_grid(height_in: int, width_in: int, height_out: int, width_out: int, kernel_h: int, kernel_w: int,
              stride: int, pad: int, dilation: int, offset_scale: float, device, dtype):
    """(K, Q, 2) grid_sample (x, y) of every tap with zero offset, and the (2,) scale of an offset.

    Cached per shape: building it is ~10 small ops, which at 16x48 cost as much as the sampling.
    """
    key = (height_in, width_in, height_out, width_out, kernel_h, kernel_w, stride, pad, dilation,
           float(offset_scale), str(device), dtype)
    cached = _BASE_GRIDS.get(key)
    if cached is not None:
        return cached
    half_w, half_h = (dilation * (kernel_w - 1)) / 2, (dilation * (kernel_h - 1)) / 2
    cols = torch.arange(kernel_w, dtype=torch.float64).repeat_interleave(kernel_h)  # tap t -> column i
    rows = torch.arange(kernel_h, dtype=torch.float64).repeat(kernel_w)  # tap t -> row j
    out_x = torch.arange(width_out, dtype=torch.float64) * stride - pad + half_w
    out_y = torch.arange(height_out, dtype=torch.float64) * stride - pad + half_h
    pixel_x = out_x[None, None, :] + offset_scale * (cols * dilation - half_w)[:, None, None]
    pixel_y = out_y[None, :, None] + offset_scale * (rows * dilation - half_h)[:, None, None]
    pixel_x, pixel_y = torch.broadcast_tensors(pixel_x, pixel_y)  # (K, H_out, W_out)
    # align_corners=False: pixel p lies at (2p + 1) / size - 1.
    grid = torch.stack(((2 * pixel_x + 1) / width_in - 1, (2 * pixel_y + 1) / height_in - 1), dim=-1)
    grid = grid.reshape(kernel_h * kernel_w, height_out * width_out, 2).to(device=device, dtype=dtype)
    scale = torch.tensor([2 * offset_scale / width_in, 2 * offset_scale / height_in], device=device, dtype=dtype)
    if len(_BASE_GRIDS) >= _MAX_CACHED_GRIDS:
        _BASE_GRIDS.clear()
    _BASE_GRIDS[key] = (grid, scale)
    return grid, scale


def _split_offset_mask(offset_mask: torch.Tensor, group: int, taps: int):
    """Views (B, G, K, 2, Q) of the offsets and (B, G, K, Q) of the masks of a (B, P, H, W) tensor."""
    batch, _, height_out, width_out = offset_mask.shape
    per_group = offset_mask.flatten(2)[:, :group * 3 * taps].unflatten(1, (group, 3 * taps))
    offsets, masks = per_group.split([2 * taps, taps], dim=2)
    return offsets.unflatten(2, (taps, 2)), masks


def _sampling_grid(offsets: torch.Tensor, base: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(B*G, K, Q, 2) grid = base + offset * scale, in the base's (fp32/fp64) dtype."""
    batch, group, taps, _, positions = offsets.shape
    if torch.jit.is_tracing():  # exporters: no out= (the ONNX exporter rejects it)
        return torch.addcmul(base, offsets.transpose(-1, -2).to(base.dtype), scale).reshape(-1, taps, positions, 2)
    grid = torch.empty(batch, group, taps, positions, 2, device=base.device, dtype=base.dtype)
    torch.addcmul(base, offsets.transpose(-1, -2).to(base.dtype), scale, out=grid)
    return grid.view(batch * group, taps, positions, 2)


def _aggregate(sampled: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """sum_t sampled[:, :, :, t] * masks[:, :, t]: (B, G, D, K, Q) x (B, G, K, Q) -> (B, G, D, Q).

    K fused multiply-adds over contiguous (B, G, D, Q) slices: the mask never forms a K-times product.
    """
    if torch.jit.is_tracing():  # exporters: one traceable out-of-place expression
        return (sampled * masks.unsqueeze(2)).sum(3)
    out = torch.mul(sampled[:, :, :, 0], masks[:, :, None, 0])
    for tap in range(1, sampled.shape[3]):
        out.addcmul_(sampled[:, :, :, tap], masks[:, :, None, tap])
    return out


def _forward(value, offset_mask, kernel_h, kernel_w, stride, pad, dilation, group, group_channels,
             offset_scale):
    batch, channels, height, width = value.shape
    if channels != group * group_channels:
        raise ValueError(f"value has {channels} channels, group {group} x group_channels {group_channels} "
                         f"= {group * group_channels}")
    taps = kernel_h * kernel_w
    if offset_mask.shape[1] < group * 3 * taps:
        raise ValueError(f"offset_mask has {offset_mask.shape[1]} channels, needs >= {group * 3 * taps}")
    height_out, width_out = offset_mask.shape[-2:]
    base, scale = base_grid(height, width, height_out, width_out, kernel_h, kernel_w, stride, pad, dilation,
                            offset_scale, value.device, position_dtype(value.dtype))
    offsets, masks = _split_offset_mask(offset_mask, group, taps)
    grid = _sampling_grid(offsets, base, scale)
    value_groups = value.reshape(batch * group, group_channels, height, width)
    sampled = F.grid_sample(value_groups, grid.to(value.dtype), mode="bilinear", padding_mode="zeros",
                            align_corners=False)  # (B*G, D, K, Q)
    sampled = sampled.view(batch, group, group_channels, taps, height_out * width_out)
    out = _aggregate(sampled, masks).view(batch, channels, height_out, width_out)
    return out, (value_groups, grid, masks, sampled, scale)


class DCNv4TorchFunction(Function):
    """(value, offset_mask) -> output with the gradients of both inputs computed in one backward."""

    @staticmethod
    def forward(ctx, value, offset_mask, kernel_h, kernel_w, stride, pad, dilation, group, group_channels,
                offset_scale):
        out, (value_groups, grid, masks, sampled, scale) = _forward(
            value, offset_mask, kernel_h, kernel_w, stride, pad, dilation, group, group_channels, offset_scale)
        ctx.save_for_backward(value_groups, grid, masks, sampled, scale)
        ctx.shapes = (value.shape, offset_mask.shape, group)
        ctx.needs_value = ctx.needs_input_grad[0]
        return out

    @staticmethod
    def backward(ctx, grad_out):
        value_groups, grid, masks, sampled, scale = ctx.saved_tensors
        value_shape, offset_mask_shape, group = ctx.shapes
        batch, _, group_channels, taps, positions = sampled.shape
        grad_out = grad_out.reshape(batch, group, group_channels, positions)
        grad_sampled = sampled.new_empty(sampled.shape)  # contiguous (B, G, D, K, Q), as grid_sample wants
        torch.mul(grad_out.unsqueeze(3), masks.unsqueeze(2), out=grad_sampled)
        grad_value, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
            grad_sampled.view(batch * group, group_channels, taps, positions), value_groups,
            grid.to(value_groups.dtype), 0, 0, False, [ctx.needs_value, True])
        grad_offset_mask = grad_out.new_zeros(offset_mask_shape)
        grad_offsets, grad_masks = _split_offset_mask(grad_offset_mask, group, taps)
        # d out / d offset = d out / d grid * scale, written into the (dx, dy) slots of each tap.
        torch.mul(grad_grid.view(batch, group, taps, positions, 2), scale.to(grad_grid.dtype),
                  out=grad_offsets.transpose(-1, -2))
        # d out / d mask[t] = sum_d grad_out[d] * sampled[d, t]: D fused multiply-adds, no (N, D, K, Q) temporary.
        for channel in range(group_channels):
            grad_masks.addcmul_(sampled[:, :, channel], grad_out[:, :, channel, None])
        if grad_value is not None:
            grad_value = grad_value.view(value_shape)
        return grad_value, grad_offset_mask, None, None, None, None, None, None, None, None


def dcnv4_torch(value: torch.Tensor, offset_mask: torch.Tensor, kernel_h: int, kernel_w: int, stride: int,
                pad: int, dilation: int, group: int, group_channels: int, offset_scale: float) -> torch.Tensor:
    """DCNv4's op on channel-first tensors (module docstring): (B, G*D, H, W), (B, P, Ho, Wo) -> (B, G*D, Ho, Wo).

    Both inputs must share a floating dtype; bf16/fp16 callers convert to fp32 first (lpasrn.models.dcn).
    """
    value, offset_mask = value.contiguous(), offset_mask.contiguous()
    args = (kernel_h, kernel_w, stride, pad, dilation, group, group_channels, offset_scale)
    if torch.is_grad_enabled() and (value.requires_grad or offset_mask.requires_grad) \
            and not torch.jit.is_tracing():
        return DCNv4TorchFunction.apply(value, offset_mask, *args)
    return _forward(value, offset_mask, *args)[0]
