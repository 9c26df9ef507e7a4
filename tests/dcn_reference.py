"""Loop transcription of DCNv4's forward CUDA kernel (forward_kernel_dcn_reg in dcnv4_im2col_cuda.cuh,
softmax=False) for tests. Shares no code with lpasrn.

Per batch b, output pixel qi (row-major over H_out x W_out), group gi, the kernel reads
p_offset[(b*Q + qi) * padded_offset_dim + gi*K*3 + ...]: K (w, h) offset pairs then K masks; it walks
the taps with i over kernel_w (outer) and j over kernel_h (inner), and for each
    w_im = p0_w - half_w * s + (i * dil + offset_w) * s,   p0_w = half_w - pad_w + (qi % W_out) * stride_w
    h_im = p0_h - half_h * s + (j * dil + offset_h) * s,   p0_h = half_h - pad_h + (qi / W_out) * stride_h
adds mask * bilinear(value, h_im, w_im) when -1 < h_im < H and -1 < w_im < W (bilinear corners
outside the image count as 0). Value is (B, H, W, G*D), output (B, H_out, W_out, G*D).
"""
from __future__ import annotations

import math

import torch


def bilinear_at(image: torch.Tensor, h: float, w: float) -> torch.Tensor:
    """Bilinear value of image (H, W, D) at pixel (h, w); corners outside the image count as 0."""
    height, width = image.shape[:2]
    h0, w0 = math.floor(h), math.floor(w)
    value = image.new_zeros(image.shape[-1])
    for corner_h, weight_h in ((h0, 1 - (h - h0)), (h0 + 1, h - h0)):
        for corner_w, weight_w in ((w0, 1 - (w - w0)), (w0 + 1, w - w0)):
            if 0 <= corner_h < height and 0 <= corner_w < width:
                value = value + weight_h * weight_w * image[corner_h, corner_w]
    return value


def dcnv4_kernel(value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                 dilation_w, group, group_channels, offset_scale, im2col_step, remove_center):
    """DCNv4Function.apply's forward, argument for argument (im2col_step only checked for validity)."""
    batch, height_in, width_in, channels = value.shape
    assert channels == group * group_channels, "Input channels and group times group channels wont match"
    assert batch % min(batch, im2col_step) == 0, "batch must divide im2col_step"
    assert offset_mask.shape[-1] % 8 == 0 and offset_mask.is_contiguous() and value.is_contiguous()
    height_out = (height_in + 2 * pad_h - (dilation_h * (kernel_h - 1) + 1)) // stride_h + 1
    width_out = (width_in + 2 * pad_w - (dilation_w * (kernel_w - 1) + 1)) // stride_w + 1
    taps = kernel_h * kernel_w - int(remove_center)
    half_w, half_h = (dilation_w * (kernel_w - 1)) >> 1, (dilation_h * (kernel_h - 1)) >> 1
    flat = offset_mask.reshape(batch, height_out * width_out, -1)
    out = value.new_zeros(batch, height_out, width_out, channels)
    for b in range(batch):
        for qi in range(height_out * width_out):
            p0_w = half_w - pad_w + (qi % width_out) * stride_w - half_w * offset_scale
            p0_h = half_h - pad_h + (qi // width_out) * stride_h - half_h * offset_scale
            for gi in range(group):
                params = flat[b, qi, gi * taps * 3:(gi + 1) * taps * 3]
                image = value[b, :, :, gi * group_channels:(gi + 1) * group_channels]
                tap = 0
                total = value.new_zeros(group_channels)
                for i in range(kernel_w):
                    for j in range(kernel_h):
                        if remove_center and i == kernel_w // 2 and j == kernel_h // 2:
                            continue
                        w_im = p0_w + (i * dilation_w + float(params[2 * tap])) * offset_scale
                        h_im = p0_h + (j * dilation_h + float(params[2 * tap + 1])) * offset_scale
                        if -1 < h_im < height_in and -1 < w_im < width_in:
                            total = total + params[2 * taps + tap] * bilinear_at(image, h_im, w_im)
                        tap += 1
                out[b, qi // width_out, qi % width_out, gi * group_channels:(gi + 1) * group_channels] = total
    return out
