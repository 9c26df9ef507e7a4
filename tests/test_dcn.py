"""Deformable conv: the fast DCNv3 path against the loop reference, conv equivalence, gradients, state dicts."""
import math

import pytest
import torch
import torch.nn.functional as F

from lpasrn.models import dcn
from lpasrn.models.dcn import DeformConv2d, _dcnv4_pack, deform_conv_dcnv3, deform_conv_reference

GROUPS, CHANNELS, OUT, HEIGHT, WIDTH = 2, 4, 3, 4, 5
TAPS = 9


def random_case(batch=2, offset_scale=2.5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, CHANNELS, HEIGHT, WIDTH, generator=generator, dtype=torch.float64)
    # Fractional offsets up to +-2.5 px on a 4x5 map: many taps land partly or wholly outside.
    offsets = (torch.rand(batch, GROUPS * 2 * TAPS, HEIGHT, WIDTH, generator=generator, dtype=torch.float64)
               * 2 - 1) * offset_scale
    masks = torch.rand(batch, GROUPS * TAPS, HEIGHT, WIDTH, generator=generator, dtype=torch.float64)
    weight = torch.randn(OUT, CHANNELS, 3, 3, generator=generator, dtype=torch.float64)
    bias = torch.randn(OUT, generator=generator, dtype=torch.float64)
    return x, offsets, masks, weight, bias


def test_dcnv3_path_matches_loop_reference_with_out_of_bounds_offsets():
    x, offsets, masks, weight, bias = random_case()
    rows = torch.arange(HEIGHT, dtype=torch.float64).view(1, 1, 1, HEIGHT, 1)
    pixel_y = offsets.view(2, GROUPS, 2, TAPS, HEIGHT, WIDTH)[:, :, 0] + rows
    assert (pixel_y < -1).any() and (pixel_y > HEIGHT).any()  # the case really samples outside
    expected = deform_conv_reference(x, offsets, masks, weight, bias, padding=1, groups=GROUPS)
    actual = deform_conv_dcnv3(x, offsets, masks, weight, bias, padding=1, groups=GROUPS)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    channels_last = deform_conv_dcnv3(x.contiguous(memory_format=torch.channels_last), offsets, masks,
                                      weight, bias, padding=1, groups=GROUPS)
    torch.testing.assert_close(channels_last, expected, atol=1e-5, rtol=0)


def test_zero_offsets_and_unit_masks_equal_conv2d():
    x, offsets, masks, weight, bias = random_case()
    expected = F.conv2d(x, weight, bias, padding=1)
    for sample in (deform_conv_dcnv3, deform_conv_reference):
        actual = sample(x, torch.zeros_like(offsets), torch.ones_like(masks), weight, bias, padding=1, groups=GROUPS)
        torch.testing.assert_close(actual, expected, atol=1e-10, rtol=0)


def test_integer_offsets_shift_the_sampled_image():
    # An offset of exactly +1 column on every tap reads columns w .. w+2 instead of w-1 .. w+1:
    # a conv with no left padding and two zero columns on the right.
    x, offsets, masks, weight, bias = random_case()
    shifted_offsets = torch.zeros_like(offsets).view(2, GROUPS, 2, TAPS, HEIGHT, WIDTH)
    shifted_offsets[:, :, 1] = 1.0
    actual = deform_conv_dcnv3(x, shifted_offsets.view_as(offsets), torch.ones_like(masks), weight, bias, 1, GROUPS)
    expected = F.conv2d(F.pad(x, (0, 2, 1, 1)), weight, bias)
    torch.testing.assert_close(actual, expected, atol=1e-10, rtol=0)


def test_module_at_initialisation_is_an_ordinary_conv():
    torch.manual_seed(0)
    layer = DeformConv2d(8, 6, groups=4, use_dcnv4=False)
    x = torch.randn(2, 8, 8, 12)
    torch.testing.assert_close(layer(x), F.conv2d(x, layer.weight, layer.bias, padding=1), atol=1e-5, rtol=0)


def test_gradcheck_input_weight_offsets_masks():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    # Offsets kept away from integer positions, where bilinear interpolation has kinks.
    offsets = (torch.rand(1, 2 * 2 * TAPS, 3, 4, generator=generator, dtype=torch.float64) * 0.6 + 0.2)
    offsets = (offsets * torch.sign(torch.randn(offsets.shape, generator=generator, dtype=torch.float64)))
    offsets.requires_grad_(True)
    masks = torch.rand(1, 2 * TAPS, 3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 2, 3, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *args: deform_conv_dcnv3(*args, padding=1, groups=2), (x, offsets, masks, weight, bias))


def test_module_gradients_reach_offset_predictor_and_input():
    torch.manual_seed(0)
    layer = DeformConv2d(4, 4, groups=2, use_dcnv4=False)
    torch.nn.init.normal_(layer.conv_offset_mask.weight, std=0.1)  # leave the zero-offset kink
    x = torch.randn(2, 4, 6, 8, requires_grad=True)
    layer(x).square().sum().backward()
    for name, param in [("input", x), ("weight", layer.weight), ("offset predictor", layer.conv_offset_mask.weight),
                        ("offset depthwise", layer.offset_dw.weight)]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_state_dict_keys_identical_for_both_paths_and_loadable():
    with_v4 = DeformConv2d(16, 16, groups=2, use_dcnv4=True)
    without_v4 = DeformConv2d(16, 16, groups=2, use_dcnv4=False)
    assert list(with_v4.state_dict()) == list(without_v4.state_dict())
    without_v4.load_state_dict(with_v4.state_dict())
    x = torch.randn(1, 16, 4, 8)
    # On CPU both constructions run the DCNv3 path: same weights, same output.
    torch.testing.assert_close(with_v4(x), without_v4(x))


def test_cpu_input_reason_is_logged_once(caplog):
    dcn._LOGGED_CHOICES.clear()
    layer = DeformConv2d(4, 4, groups=2)
    with caplog.at_level("INFO", logger="lpasrn.models.dcn"):
        layer(torch.randn(1, 4, 4, 4))
        layer(torch.randn(1, 4, 4, 4))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "DCNv3" in messages[0] and "input on cpu" in messages[0]


def emulate_dcnv4_kernel(value, offset_mask, groups, group_channels, kernel_size=3, padding=1):
    """Loop transcription of DCNv4's forward_kernel_dcn (offset_scale 1, stride 1, dilation 1):
    per group, taps column-major, (w, h) offset pairs then masks, summed over taps."""
    batch, height, width, _ = value.shape
    taps = kernel_size * kernel_size
    out = value.new_zeros(batch, height, width, groups * group_channels)
    for b in range(batch):
        for h in range(height):
            for w in range(width):
                for g in range(groups):
                    params = offset_mask[b, h, w, g * taps * 3:(g + 1) * taps * 3]
                    image = value[b, :, :, g * group_channels:(g + 1) * group_channels].permute(2, 0, 1)
                    for tap, (i, j) in enumerate((i, j) for i in range(kernel_size) for j in range(kernel_size)):
                        w_im = w - padding + i + float(params[2 * tap])
                        h_im = h - padding + j + float(params[2 * tap + 1])
                        attention = params[2 * taps + tap]
                        out[b, h, w, g * group_channels:(g + 1) * group_channels] += (
                            attention * dcn._bilinear_at(image, h_im, w_im))
    return out


def test_dcnv4_packing_reproduces_the_conv_under_the_kernel_layout():
    # The DCNv4 kernel needs CUDA; its documented layout is emulated here to check the packing.
    x, offsets, masks, weight, bias = random_case(batch=1, offset_scale=1.5)
    value, offset_mask = _dcnv4_pack(x, offsets, masks, 3, GROUPS)
    assert offset_mask.shape[-1] % 8 == 0 and offset_mask.is_contiguous()
    columns = emulate_dcnv4_kernel(value, offset_mask, GROUPS * TAPS, CHANNELS // GROUPS)
    weight_cols = weight.view(OUT, GROUPS, CHANNELS // GROUPS, TAPS).transpose(2, 3).reshape(OUT, -1)
    out = (columns.reshape(1, HEIGHT * WIDTH, -1) @ weight_cols.t() + bias).view(1, HEIGHT, WIDTH, OUT)
    expected = deform_conv_reference(x, offsets, masks, weight, bias, padding=1, groups=GROUPS)
    torch.testing.assert_close(out.permute(0, 3, 1, 2), expected, atol=1e-10, rtol=0)


def test_invalid_construction_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        DeformConv2d(6, 6, groups=4)
    with pytest.raises(ValueError, match="2 \\* padding \\+ 1"):
        DeformConv2d(8, 8, kernel_size=3, padding=0)
    with torch.no_grad():
        assert math.isfinite(float(DeformConv2d(8, 8)(torch.randn(1, 8, 4, 4)).sum()))


def test_dcnv3_without_bias_and_layout_of_the_output():
    # bias=None takes the plain bmm branch (no baddbmm); a channels_last input gives a channels_last output.
    x, offsets, masks, weight, _ = random_case(offset_scale=1.0, seed=3)
    expected = deform_conv_reference(x, offsets, masks, weight, None, padding=1, groups=GROUPS)
    torch.testing.assert_close(deform_conv_dcnv3(x, offsets, masks, weight, None, 1, GROUPS), expected,
                               atol=1e-5, rtol=0)
    out = deform_conv_dcnv3(x.contiguous(memory_format=torch.channels_last), offsets, masks, weight, None, 1, GROUPS)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_offsets_and_masks_split_the_predictor_output():
    torch.manual_seed(0)
    layer = DeformConv2d(8, 8, groups=2, use_dcnv4=False)
    torch.nn.init.normal_(layer.conv_offset_mask.weight)
    x = torch.randn(1, 8, 4, 6)
    offsets, masks = layer.offsets_and_masks(x)
    predicted = layer.conv_offset_mask(layer.offset_dw(x))
    assert offsets.shape == (1, 2 * 2 * TAPS, 4, 6) and masks.shape == (1, 2 * TAPS, 4, 6)
    torch.testing.assert_close(offsets, predicted[:, :2 * 2 * TAPS])
    torch.testing.assert_close(masks, 2 * torch.sigmoid(predicted[:, 2 * 2 * TAPS:]))
