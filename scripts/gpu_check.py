"""Checks of scripts/gpu-check.sh that run in one Python process on one GPU; one PASS/FAIL line each.

    python scripts/gpu_check.py nccl    # the sync helpers under NCCL (CUDA tensors, CPU statistics)
    python scripts/gpu_check.py dcn     # python -m lpasrn.models.dcn_gpu_check
"""
from __future__ import annotations

import os
import sys
import traceback

import torch


def report(name: str, check) -> bool:
    try:
        detail = check()
    except Exception:  # noqa: BLE001 - a check script reports every failure and goes on
        print(f"FAIL {name}\n" + "".join("    " + line for line in traceback.format_exc().splitlines(True)))
        return False
    print(f"PASS {name}" + (f" ({detail})" if detail else ""))
    return True


def check_nccl() -> bool:
    """One-process NCCL group: the helpers must move CPU statistics to the current CUDA device and
    back (NCCL only reduces CUDA tensors), and keep dtypes (int64 counts exact, float64 sums)."""
    import torch.distributed as dist

    from lpasrn.distributed.confusion import CharacterConfusionTracker
    from lpasrn.distributed.sync import all_reduce_sum_, state_hash

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        def cpu_counts():
            counts = torch.arange(12, dtype=torch.int64) * (2 ** 40)  # beyond float32's exact range
            expected = counts.clone()
            all_reduce_sum_(counts)
            assert counts.device.type == "cpu" and counts.dtype == torch.int64
            assert torch.equal(counts, expected)

        def cuda_floats():
            values = torch.rand(1000, device="cuda", dtype=torch.float32)
            expected = values.clone()
            all_reduce_sum_(values)
            assert values.device.type == "cuda" and torch.equal(values, expected)

        def confusion_sync():
            tracker = CharacterConfusionTracker()
            tracker.update(["ABC1234"], ["ABD1234"])
            before = state_hash(tracker.deltas)
            tracker.sync()
            assert state_hash(tracker.counts) == before and int(tracker.deltas.sum()) == 0
            return f"{int(tracker.counts.sum())} pairs"

        results = [report("nccl: int64 CPU counts through NCCL", cpu_counts),
                   report("nccl: float32 CUDA values", cuda_floats),
                   report("nccl: confusion sync", confusion_sync)]
    finally:
        dist.destroy_process_group()
    return all(results)


def check_dcn() -> bool:
    """The DCNv4 CUDA op against the PyTorch path (same weights, fp32 and bf16 autocast, output and
    every gradient, then their speed): lpasrn.models.dcn_gpu_check prints its own PASS/FAIL lines."""
    from lpasrn.models import dcn_gpu_check

    return dcn_gpu_check.main() == 0


if __name__ == "__main__":
    if not torch.cuda.is_available():
        print("FAIL no CUDA device visible to torch")
        sys.exit(1)
    wanted = sys.argv[1:] or ["nccl", "dcn"]
    checks = {"nccl": check_nccl, "dcn": check_dcn}
    ok = all([checks[name]() for name in wanted])
    sys.exit(0 if ok else 1)
