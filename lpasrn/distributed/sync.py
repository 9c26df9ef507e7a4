"""Small helpers around torch.distributed collectives, safe to call in single-process runs.

Statistics that ranks share (confusion counts, mining counters, recognition sums) go through
`all_reduce_sum_`, which is a no-op without an initialised process group, so the same code runs in
`python launch/run.py` debug mode and under `accelerate launch`.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def _reduce_dtype(dtype: torch.dtype) -> torch.dtype:
    # Sums are exact in int64 and as exact as possible in float64, whatever the caller's dtype.
    if dtype.is_floating_point or dtype.is_complex:
        return torch.float64
    return torch.int64


def _collective_device(tensor: torch.Tensor) -> torch.device:
    """Where the collective must run: NCCL only takes tensors on the current CUDA device."""
    backend = str(dist.get_backend())
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    # gloo (CPU), or a mixed backend such as "cpu:gloo,cuda:nccl" that dispatches on the device.
    return tensor.device


def all_reduce_sum_(tensor: torch.Tensor, widen: bool = True) -> torch.Tensor:
    """Sum `tensor` over all ranks, in place, and return it.

    The sum runs in float64 (floating tensors) or int64 (integer/bool tensors) on the device the
    backend needs (the current CUDA device for NCCL), and the result is copied back into `tensor`
    with its own dtype and device. Without an initialised process group it does nothing.
    `widen=False` keeps the tensor's own dtype (no widened copy of a large int32 counter tensor;
    the caller guarantees the sum fits).

    # NOTE: call on all ranks, in the same order, with tensors of the same shape; a rank that skips
    # the call makes every other rank hang.
    """
    if not is_distributed():
        return tensor
    dtype = _reduce_dtype(tensor.dtype) if widen else tensor.dtype
    work = tensor.detach().to(device=_collective_device(tensor), dtype=dtype)
    work = work.contiguous()  # may alias `tensor` when nothing had to change: reduced in place then
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    if work.data_ptr() != tensor.data_ptr():
        tensor.copy_(work.to(device=tensor.device, dtype=tensor.dtype))
    return tensor


def broadcast_from_main_(tensor: torch.Tensor) -> torch.Tensor:
    """Overwrite `tensor` on every rank with rank 0's values, in place (no-op in a single process).

    # NOTE: call on all ranks with tensors of the same shape and dtype.
    """
    if not is_distributed():
        return tensor
    work = tensor.detach().to(device=_collective_device(tensor)).contiguous()
    dist.broadcast(work, src=0)
    if work.data_ptr() != tensor.data_ptr():
        tensor.copy_(work.to(device=tensor.device))
    return tensor


def barrier() -> None:
    """Wait for every rank (no-op in a single process).

    # NOTE: call on all ranks.
    """
    if is_distributed():
        dist.barrier()


def _update_hash(digest: "hashlib._Hash", value: Any) -> None:
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"tensor:{value.dtype}:{tuple(value.shape)}:".encode())
        # view as bytes so every dtype (bfloat16 included) is hashed bit for bit
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    elif isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        digest.update(f"ndarray:{array.dtype.str}:{array.shape}:".encode())
        digest.update(array.tobytes())
    elif isinstance(value, dict):
        digest.update(f"dict:{len(value)}:".encode())
        for key in sorted(value, key=str):
            digest.update(f"key:{key!s}:".encode())
            _update_hash(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__}:{len(value)}:".encode())
        for item in value:
            _update_hash(digest, item)
    elif isinstance(value, float):
        digest.update(f"float:{value.hex()}:".encode())  # exact bits, not a rounded repr
    elif value is None or isinstance(value, (bool, int, str)):
        digest.update(f"{type(value).__name__}:{value!r}:".encode())
    else:
        raise TypeError(f"state_hash cannot hash a {type(value).__name__}")


def state_hash(value: Any) -> str:
    """sha256 hex digest of the exact bytes of a tensor or a (nested) dict/list of tensors and scalars.

    dtype, shape and dict keys are part of the hash, so two states hash equal only when they are
    bitwise identical; tests use it to compare ranks with each other and with one process.
    """
    digest = hashlib.sha256()
    _update_hash(digest, value)
    return digest.hexdigest()
