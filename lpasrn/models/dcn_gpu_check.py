"""`python -m lpasrn.models.dcn_gpu_check`: the DCNv4 CUDA op against the PyTorch path on one GPU.

Same weights, input on CUDA, fp32 and under bf16 autocast, forward output and the gradients of the
input and of every parameter; then forward+backward time of both paths. One PASS/FAIL/SKIP line
per check (for scripts/gpu-check.sh); exit status 1 if any check failed. Shapes: the paper preset's
layer (64 channels, 4 groups) on a batch of 16x48 maps.
"""
from __future__ import annotations

import copy
import sys
import time

import torch

from lpasrn.models.dcn import DeformConv2d

# bf16 autocast: the projections run in bf16 (~3 significant digits) on both paths, the op in fp32.
TOLERANCES = {"fp32": 1e-4, "bf16": 3e-2}


def forward_backward(layer: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor, autocast: bool):
    """Output and gradients (input first, then parameters by name) of one forward+backward."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        out = layer(x)
    out.float().backward(grad)
    grads = {"input": x.grad}
    grads.update({name: p.grad for name, p in layer.named_parameters()})
    return out.float().detach(), grads


def relative_error(found: torch.Tensor, expected: torch.Tensor) -> float:
    return float((found.float() - expected.float()).abs().max() / expected.float().abs().max().clamp_min(1e-12))


def compare_paths(fast: torch.nn.Module, reference: torch.nn.Module, x: torch.Tensor, autocast: bool) -> dict:
    """Largest relative error of `fast` against `reference` per output / gradient."""
    grad = torch.randn(x.shape, device=x.device, generator=torch.Generator(x.device).manual_seed(1))
    out_fast, grads_fast = forward_backward(fast, x, grad, autocast)
    out_ref, grads_ref = forward_backward(reference, x, grad, autocast)
    errors = {"output": relative_error(out_fast, out_ref)}
    errors.update({f"grad {name}": relative_error(grads_fast[name], grads_ref[name]) for name in grads_ref})
    return errors


def seconds_per_step(layer: torch.nn.Module, x: torch.Tensor, steps: int = 20) -> float:
    grad = torch.ones_like(x)
    for _ in range(3):
        forward_backward(layer, x, grad, autocast=False)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        forward_backward(layer, x, grad, autocast=False)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def paired_layers(channels: int = 64, groups: int = 4, device: str = "cuda"):
    """The same random weights (offsets and masks away from their zero start) on both paths."""
    torch.manual_seed(0)
    torch_path = DeformConv2d(channels, groups=groups, use_dcnv4=False)
    torch.nn.init.normal_(torch_path.offset_mask.weight, std=0.1)
    torch.nn.init.normal_(torch_path.offset_mask.bias, std=0.5)
    dcnv4_path = copy.deepcopy(torch_path)
    dcnv4_path.use_dcnv4 = True
    return dcnv4_path.to(device), torch_path.to(device)


def main() -> int:
    if not torch.cuda.is_available():
        print("SKIP dcnv4: no CUDA device")
        return 0
    dcnv4_path, torch_path = paired_layers()
    x = torch.randn(32, 64, 16, 48, device="cuda").contiguous(memory_format=torch.channels_last)
    reason = dcnv4_path.dcnv4_unavailable_reason(x)
    if reason is not None:
        print(f"SKIP dcnv4: {reason}")
        return 0
    failed = False
    for precision, tolerance in TOLERANCES.items():
        errors = compare_paths(dcnv4_path, torch_path, x, autocast=precision == "bf16")
        worst = max(errors, key=errors.get)
        ok = errors[worst] <= tolerance
        failed |= not ok
        print(f"{'PASS' if ok else 'FAIL'} dcnv4 vs pytorch {precision}: worst relative error {errors[worst]:.2e} "
              f"({worst}; tolerance {tolerance:.0e})")
    fast, slow = seconds_per_step(dcnv4_path, x), seconds_per_step(torch_path, x)
    print(f"INFO dcnv4 forward+backward {fast * 1e3:.2f} ms, pytorch path {slow * 1e3:.2f} ms ({slow / fast:.1f}x)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
