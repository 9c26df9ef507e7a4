"""FLOPs per sample of a model's forward or training step, counted by torch's FlopCounterMode.

FlopCounterMode counts matmul and convolution FLOPs (2 per multiply-add), forward and backward,
and nothing else (no elementwise ops, activations, pooling, interpolation). It does not know
grid_sample, the core of the PyTorch deformable-conv path, so that is added here analytically per output element and
channel: forward 8 FLOPs (4 bilinear corner weights times values, summed); backward 16 (8 to scatter
the gradient to the 4 corners, 8 for the two coordinate gradients).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

GRID_SAMPLE_FORWARD_FLOPS = 8
GRID_SAMPLE_BACKWARD_FLOPS = 16


def _grid_sample_forward_flops(input_shape, grid_shape, *args, out_shape=None, **kwargs) -> int:
    batch, channels = input_shape[:2]
    return GRID_SAMPLE_FORWARD_FLOPS * batch * channels * grid_shape[1] * grid_shape[2]


def _grid_sample_backward_flops(grad_shape, input_shape, grid_shape, *args, out_shape=None, **kwargs) -> int:
    batch, channels = input_shape[:2]
    return GRID_SAMPLE_BACKWARD_FLOPS * batch * channels * grid_shape[1] * grid_shape[2]


GRID_SAMPLE_FLOPS = {
    torch.ops.aten.grid_sampler_2d: _grid_sample_forward_flops,
    torch.ops.aten.grid_sampler_2d_backward: _grid_sample_backward_flops,
}


def count_flops(run: Callable[[], object]) -> dict[str, int]:
    """FLOPs of everything `run()` executes, by operator name, plus 'total'."""
    with FlopCounterMode(display=False, custom_mapping=GRID_SAMPLE_FLOPS) as counter:
        run()
    by_op = {str(op).split(".")[-1]: int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    by_op["total"] = int(counter.get_total_flops())
    return by_op


def model_flops_per_sample(model: torch.nn.Module, example: torch.Tensor, train: bool) -> dict[str, int]:
    """FLOPs per sample of model(example) (train=False) or of forward plus backward (train=True).

    A training step's optimizer update is not counted (a few FLOPs per parameter, negligible).
    """
    def forward_backward():
        out = model(example)
        if train:
            out.float().sum().backward()

    was_training = model.training
    model.train(train)
    try:
        with torch.set_grad_enabled(train):
            counts = count_flops(forward_backward)
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return {op: n // example.shape[0] for op, n in counts.items()}
