"""DCNv4 layer: the PyTorch op against a transcription of the CUDA kernel, plain aggregation at zero
offsets, gradients, the module's DCNv4 call layout, one state dict, fp32 sampling under bf16 autocast."""
import math

import pytest
import torch
import torch.nn.functional as F

from dcn_reference import dcnv4_kernel
from lpasrn.models import dcn
from lpasrn.models.dcn import DeformConv2d, padded_offset_channels
from lpasrn.models.dcn_torch import dcnv4_torch

GROUPS, GROUP_CHANNELS, HEIGHT, WIDTH, TAPS = 2, 3, 4, 5, 9
CHANNELS = GROUPS * GROUP_CHANNELS
PADDED = padded_offset_channels(GROUPS, TAPS)  # 54 -> 56: the padding channels are exercised too


def channels_first(t):
    return t.permute(0, 3, 1, 2).contiguous()


def random_case(batch=2, offset_range=2.5, seed=0):
    """Channels-last value (B, H, W, C) and offset_mask (B, H, W, P), float64, fractional offsets."""
    generator = torch.Generator().manual_seed(seed)
    value = torch.randn(batch, HEIGHT, WIDTH, CHANNELS, generator=generator, dtype=torch.float64)
    offset_mask = torch.randn(batch, HEIGHT, WIDTH, PADDED, generator=generator, dtype=torch.float64)
    per_group = offset_mask[..., :GROUPS * 3 * TAPS].view(batch, HEIGHT, WIDTH, GROUPS, 3 * TAPS)
    per_group[..., :2 * TAPS] = (torch.rand(per_group[..., :2 * TAPS].shape, generator=generator,
                                            dtype=torch.float64) * 2 - 1) * offset_range
    return value, offset_mask


@pytest.mark.parametrize("offset_scale", [1.0, 0.7])
def test_torch_op_matches_kernel_transcription_with_out_of_bounds_offsets(offset_scale):
    value, offset_mask = random_case()
    offsets_x = offset_mask[..., :GROUPS * 3 * TAPS].view(2, HEIGHT, WIDTH, GROUPS, 3 * TAPS)[..., 0:2 * TAPS:2]
    columns = torch.arange(WIDTH, dtype=torch.float64).view(1, 1, WIDTH, 1, 1)
    assert ((offsets_x + columns) < -1).any() and ((offsets_x + columns) > WIDTH).any()  # really outside
    expected = dcnv4_kernel(value, offset_mask, 3, 3, 1, 1, 1, 1, 1, 1, GROUPS, GROUP_CHANNELS, offset_scale, 2, 0)
    actual = dcnv4_torch(channels_first(value), channels_first(offset_mask), 3, 3, 1, 1, 1, GROUPS,
                         GROUP_CHANNELS, offset_scale)
    torch.testing.assert_close(actual, channels_first(expected), atol=1e-12, rtol=0)


def test_zero_offsets_reproduce_plain_aggregation_in_kernel_tap_order():
    # Offsets 0: out(p) = sum_t mask_t(p) * value(p + tap_t), taps column-major (t = col * 3 + row).
    value, offset_mask = random_case(seed=1)
    per_group = offset_mask[..., :GROUPS * 3 * TAPS].view(2, HEIGHT, WIDTH, GROUPS, 3 * TAPS)
    per_group[..., :2 * TAPS] = 0
    masks = per_group[..., 2 * TAPS:]  # (B, H, W, G, K)
    padded = F.pad(channels_first(value), (1, 1, 1, 1)).view(2, GROUPS, GROUP_CHANNELS, HEIGHT + 2, WIDTH + 2)
    expected = torch.zeros(2, GROUPS, GROUP_CHANNELS, HEIGHT, WIDTH, dtype=torch.float64)
    for tap in range(TAPS):
        col, row = divmod(tap, 3)
        shifted = padded[..., row:row + HEIGHT, col:col + WIDTH]
        expected += masks[..., tap].permute(0, 3, 1, 2).unsqueeze(2) * shifted
    actual = dcnv4_torch(channels_first(value), channels_first(offset_mask), 3, 3, 1, 1, 1, GROUPS,
                         GROUP_CHANNELS, 1.0)
    torch.testing.assert_close(actual, expected.view(2, CHANNELS, HEIGHT, WIDTH), atol=1e-12, rtol=0)


def test_integer_offsets_shift_the_sampled_image():
    # dx = +1 on every tap with only the centre mask set: out(h, w) = value(h, w + 1), 0 past the edge.
    value, offset_mask = random_case(seed=2)
    per_group = offset_mask[..., :GROUPS * 3 * TAPS].view(2, HEIGHT, WIDTH, GROUPS, 3 * TAPS)
    per_group[...] = 0
    per_group[..., 0:2 * TAPS:2] = 1.0
    per_group[..., 2 * TAPS + 4] = 1.0  # tap 4 = column 1, row 1: the centre
    actual = dcnv4_torch(channels_first(value), channels_first(offset_mask), 3, 3, 1, 1, 1, GROUPS,
                         GROUP_CHANNELS, 1.0)
    expected = F.pad(channels_first(value)[..., 1:], (0, 1))
    torch.testing.assert_close(actual, expected, atol=1e-12, rtol=0)


def test_gradcheck_value_and_offset_mask():
    generator = torch.Generator().manual_seed(3)
    value = torch.randn(1, 4, 3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    offset_mask = torch.randn(1, padded_offset_channels(2, TAPS), 3, 4, generator=generator, dtype=torch.float64)
    # Offsets kept away from integer positions, where bilinear interpolation has kinks.
    offsets = offset_mask[:, :2 * 3 * TAPS].view(1, 2, 3 * TAPS, 3, 4)[:, :, :2 * TAPS]
    offsets.copy_((torch.rand(offsets.shape, generator=generator, dtype=torch.float64) * 0.6 + 0.2)
                  * torch.sign(torch.randn(offsets.shape, generator=generator, dtype=torch.float64)))
    offset_mask.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v, om: dcnv4_torch(v, om, 3, 3, 1, 1, 1, 2, 2, 1.0), (value, offset_mask))


def test_padding_channels_get_zero_gradient_and_inference_path_matches():
    value, offset_mask = (channels_first(t).requires_grad_(True) for t in random_case(seed=4))
    out = dcnv4_torch(value, offset_mask, 3, 3, 1, 1, 1, GROUPS, GROUP_CHANNELS, 1.0)
    out.square().sum().backward()
    assert offset_mask.grad[:, GROUPS * 3 * TAPS:].abs().sum() == 0
    assert offset_mask.grad[:, :GROUPS * 3 * TAPS].abs().sum() > 0 and value.grad.abs().sum() > 0
    with torch.no_grad():  # the plain (no autograd Function) path
        torch.testing.assert_close(dcnv4_torch(value, offset_mask, 3, 3, 1, 1, 1, GROUPS, GROUP_CHANNELS, 1.0), out)


def random_layer(channels=16, groups=2, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    layer = DeformConv2d(channels, groups=groups, use_dcnv4=False).to(dtype)
    torch.nn.init.normal_(layer.offset_mask.weight, std=0.3)  # leave the zero-offset start
    torch.nn.init.normal_(layer.offset_mask.bias, std=0.5)
    return layer


def test_module_dcnv4_call_layout_reproduces_the_pytorch_path():
    # What the CUDA path hands DCNv4Function.apply, run through the kernel transcription, then the
    # output projection, must equal the module's PyTorch path: the argument layout is the kernel's.
    layer = random_layer()
    x = torch.randn(2, 16, 4, 6, dtype=torch.float64)
    value, offset_mask = layer.dcnv4_inputs(x)
    assert value.shape == (2, 4, 6, 16) and offset_mask.shape == (2, 4, 6, padded_offset_channels(2, TAPS))
    args = layer.dcnv4_args(x.shape[0])
    assert args == (3, 3, 1, 1, 1, 1, 1, 1, 2, 8, 1.0, 2, 0)
    with torch.no_grad():
        through_kernel = layer.output_proj(dcnv4_kernel(value.contiguous(), offset_mask.contiguous(), *args))
        torch.testing.assert_close(layer(x), through_kernel.permute(0, 3, 1, 2), atol=1e-10, rtol=0)


def test_module_at_initialisation_is_projection_box_filter_projection():
    torch.manual_seed(0)
    layer = DeformConv2d(8, groups=4, use_dcnv4=False)
    x = torch.randn(2, 8, 6, 10)
    value = F.conv2d(x, layer.value_proj.weight[:, :, None, None], layer.value_proj.bias)
    boxed = F.conv2d(value, torch.full((8, 1, 3, 3), 1 / 9), padding=1, groups=8)
    expected = F.conv2d(boxed, layer.output_proj.weight[:, :, None, None], layer.output_proj.bias)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)


def test_module_gradients_reach_every_parameter_and_layout_is_kept():
    layer = random_layer(dtype=torch.float32)
    x = torch.randn(2, 16, 6, 8)
    out = layer(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, layer(x))
    out.square().sum().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_state_dict_has_dcnv4_names_and_moves_between_paths():
    with_v4, without_v4 = DeformConv2d(16, groups=2, use_dcnv4=True), DeformConv2d(16, groups=2, use_dcnv4=False)
    assert list(with_v4.state_dict()) == list(without_v4.state_dict())
    assert {key.split(".")[0] for key in with_v4.state_dict()} == {"value_proj", "offset_mask_dw", "offset_mask",
                                                                   "output_proj"}
    assert with_v4.offset_mask.out_features == 56  # 2 groups x 9 taps x 3, padded to a multiple of 8
    without_v4.load_state_dict(with_v4.state_dict())
    x = torch.randn(1, 16, 4, 8)
    torch.testing.assert_close(with_v4(x), without_v4(x))  # on CPU both run the PyTorch path


def test_cpu_input_reason_is_logged_once(caplog):
    dcn._LOGGED_CHOICES.clear()
    layer = DeformConv2d(4, groups=2)
    with caplog.at_level("INFO", logger="lpasrn.models.dcn"):
        layer(torch.randn(1, 4, 4, 4))
        layer(torch.randn(1, 4, 4, 4))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "pure-PyTorch DCNv4" in messages[0] and "input on cpu" in messages[0]


def test_invalid_construction_and_input_are_rejected():
    with pytest.raises(ValueError, match="divisible"):
        DeformConv2d(6, groups=4)
    with pytest.raises(ValueError, match="2 \\* padding \\+ 1"):
        DeformConv2d(8, kernel_size=3, padding=0)
    with pytest.raises(ValueError, match=r"expects \(B, 8, H, W\)"):
        DeformConv2d(8)(torch.randn(1, 4, 4, 4))
    with torch.no_grad():
        assert math.isfinite(float(DeformConv2d(8)(torch.randn(1, 8, 4, 4)).sum()))


def wave_layer(width):
    """Identity projections, every tap offset by dx = 0.3, only the centre mask set: out(h, w) = x(h, w + 0.3),
    which bilinear sampling makes 0.7 x(h, w) + 0.3 x(h, w + 1)."""
    layer = DeformConv2d(8, groups=1, use_dcnv4=False)
    with torch.no_grad():
        for proj in (layer.value_proj, layer.output_proj):
            proj.weight.copy_(torch.eye(8))
            proj.bias.zero_()
        layer.offset_mask.weight.zero_()
        bias = layer.offset_mask.bias
        bias.zero_()
        bias[0:2 * TAPS:2] = 0.3
        bias[2 * TAPS + 4] = 1.0
    columns = torch.arange(width, dtype=torch.float32)
    # A wave of period 4 px: a position error of 0.1 px changes a sample by up to ~0.15.
    x = torch.sin(columns * (math.pi / 2)).expand(1, 8, 4, width).contiguous()
    wave = x[0, 0, 0]
    return layer, x, 0.7 * wave[:-1] + 0.3 * wave[1:]


def test_bf16_autocast_samples_at_fp32_positions(caplog):
    # Wide map: a bf16 grid coordinate near +-1 is quantised to 2^-8 * 192 / 2 = 0.375 px here.
    layer, x, shifted = wave_layer(width=192)
    dcn._LOGGED_CHOICES.clear()
    with torch.no_grad(), caplog.at_level("INFO", logger="lpasrn.models.dcn"):
        exact = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = layer(x)
            layer(x)
    assert exact.dtype == torch.float32 and mixed.dtype == torch.bfloat16
    torch.testing.assert_close(exact[0, :, :, :-1], shifted.expand(8, 4, -1), atol=1e-4, rtol=0)
    # bf16 values carry ~0.4% error; a bf16 position error would be up to ~0.5 here.
    assert (mixed.float() - exact).abs().max() < 0.02
    assert sum(dcn.FP32_NOTE in r.getMessage() for r in caplog.records) == 1
