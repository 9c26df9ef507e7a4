"""What the prepared engine really is, and the operations that depend on it.

Under DDP (or one process) the parameters stay fp32 and `accelerator.autocast()` does the mixed
precision. Under DeepSpeed with bf16/fp16 the parameters ARE 16-bit and accelerate's autocast does
nothing, so the inputs must be cast to the engine's dtype, and the 16-bit parameters are NOT the
weights to export: the fp32 master copies live in DeepSpeed's optimizer (trainable parameters) or
were never changed (frozen ones). DeepSpeed does not broadcast buffers either, so the BatchNorm
statistics are averaged over ranks here, under every engine, so that all engines behave alike.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from lpasrn.distributed.sync import all_reduce_sum_, world_size

log = logging.getLogger(__name__)

HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_mixed_precision(setting: str) -> tuple[str, str]:
    """(mixed precision for the Accelerator, why): `auto` defers to the launcher (`accelerate launch
    --mixed_precision` or its config file set ACCELERATE_MIXED_PRECISION), else bf16 on a GPU that
    supports it, else fp32. An explicit setting wins, with a warning when the launcher asked otherwise."""
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower()
    if setting != "auto":
        if launcher in HALF_DTYPES and launcher != setting:
            log.warning("train.mixed_precision=%s overrides the launcher's --mixed_precision %s", setting, launcher)
        return setting, "train.mixed_precision"
    if launcher in HALF_DTYPES:
        return launcher, f"the launcher (ACCELERATE_MIXED_PRECISION={launcher})"
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16", "auto: a bf16-capable GPU"
    return "no", "auto: no bf16-capable GPU"


@dataclass(frozen=True)
class EngineInfo:
    distributed_type: str
    num_processes: int
    deepspeed: bool
    param_dtype: torch.dtype       # dtype the model's parameters are stored in after prepare
    autocast: str                  # "bf16"/"fp16" when accelerate's autocast does the casting, else "no"
    partitioned: int = 0           # ZeRO-3: parameter tensors split across ranks (gathered per forward)
    parameters: int = 0

    @property
    def input_dtype(self) -> torch.dtype | None:
        """Under DeepSpeed 16-bit the batch must be cast to the parameters' dtype (autocast is off)."""
        return self.param_dtype if self.deepspeed and self.param_dtype != torch.float32 else None

    @property
    def compute(self) -> str:
        if self.input_dtype is not None:
            return f"{_name(self.param_dtype)} (DeepSpeed: parameters and inputs {_name(self.param_dtype)})"
        if self.autocast != "no":
            return f"{self.autocast} autocast (parameters fp32)"
        return "fp32"

    @property
    def summary(self) -> str:
        text = f"computes in {self.compute}; losses and metrics in fp32"
        if self.partitioned:
            text += f"; ZeRO-3 partitions {self.partitioned} of {self.parameters} parameter tensors"
        return text


def _name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))


def engine_info(accelerator, model) -> EngineInfo:
    """Read what `accelerator.prepare` produced (call after prepare, on every rank)."""
    net = accelerator.unwrap_model(model)
    dtype = next(p.dtype for p in net.parameters() if p.is_floating_point())
    deepspeed = "DEEPSPEED" in str(accelerator.distributed_type)
    autocast = "no" if deepspeed else str(accelerator.mixed_precision)
    params = list(net.parameters())
    # ZeRO-3 replaces a partitioned parameter's data by an empty tensor outside of forward
    partitioned = sum(1 for p in params if p.numel() < getattr(p, "ds_numel", 0))
    return EngineInfo(str(accelerator.distributed_type).split(".")[-1], accelerator.num_processes, deepspeed,
                      dtype, autocast, partitioned, len(params))


def model_forward(accelerator, info: EngineInfo, net, batch: dict, outputs: tuple[str, ...]) -> dict:
    """Run `net` on the batch's LR/HR as the engine needs them: cast to the 16-bit parameter dtype
    under DeepSpeed, inside accelerate's autocast otherwise. The batch itself stays fp32 (loss
    targets and metrics are computed in fp32 from it).

    # NOTE: under ZeRO-3 a forward is a collective: call on all ranks the same number of times.
    """
    cast = info.input_dtype
    lr, hr = batch.get("lr"), batch.get("hr")
    if cast is not None:
        lr = None if lr is None else lr.to(cast)
        hr = None if hr is None else hr.to(cast)
    with accelerator.autocast():
        return net(lr=lr, hr=hr, outputs=outputs)


class BufferAverager:
    """Keeps the running statistics (BatchNorm) of the TRAINING parts identical on every rank: after
    each optimizer step they are replaced by their mean over ranks, in one all-reduce.

    Why every step and not only before validation/save: a checkpoint holds one copy of the buffers
    (rank 0's), so ranks must already agree whenever one may be taken (a preemption save mid-epoch),
    or a resumed run would differ from the uninterrupted one. Frozen parts run in eval mode and
    their buffers never change. DDP's own buffer broadcast is switched off (pipeline.py) so that DDP
    and DeepSpeed compute the same thing.
    """

    def __init__(self, net: torch.nn.Module, trainable_parts: set[str]):
        self.buffers = [buf for name, buf in net.named_buffers()
                        if buf.is_floating_point() and name.split(".", 1)[0] in trainable_parts]

    def average_(self) -> None:
        """# NOTE: call on all ranks at the same points (after every optimizer step)."""
        if not self.buffers or world_size() == 1:
            return
        flat = torch.cat([b.detach().reshape(-1).to(torch.float64) for b in self.buffers])
        all_reduce_sum_(flat)
        flat /= world_size()
        offset = 0
        for buf in self.buffers:
            buf.copy_(flat[offset:offset + buf.numel()].view_as(buf))
            offset += buf.numel()


def fp32_master_state_dict(accelerator, model, frozen_fp32: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights to export: fp32 masters of trainable parameters, the fp32 originals of frozen
    ones (`frozen_fp32`, taken before prepare: they never change), current buffers as fp32.

    # NOTE: collective under DeepSpeed (the fp32 masters are gathered parameter by parameter in the
    # same order on every rank): call on all ranks.
    """
    if "DEEPSPEED" not in str(accelerator.distributed_type):
        return {k: v.detach().float() if v.is_floating_point() else v
                for k, v in accelerator.get_state_dict(model).items()}
    from deepspeed.utils import safe_get_full_fp32_param

    net = accelerator.unwrap_model(model)
    state: dict[str, torch.Tensor] = {}
    for name, param in net.named_parameters():
        if not param.requires_grad:
            state[name] = frozen_fp32[name]
            continue
        master = safe_get_full_fp32_param(param)
        if master is None:  # fp32 engine without a separate master: the parameter is the master
            master = param.detach()
        state[name] = master.detach().to("cpu", torch.float32).reshape(getattr(param, "ds_shape", param.shape))
    for name, buf in net.named_buffers():
        state[name] = buf.detach().to("cpu", torch.float32 if buf.is_floating_point() else buf.dtype).clone()
    return state
