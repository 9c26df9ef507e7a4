"""The engine matrix: `--stage all` on tiny data with 2 processes through the SHIPPED accelerate and
DeepSpeed files, {DDP, ZeRO-1, ZeRO-2, ZeRO-3 with every parameter partitioned} x {fp32, bf16}.

These are the conditions of a GPU job that tiny fp32 tests used to hide: under DeepSpeed bf16 the
parameters are bf16 (the batch must be cast, the exports must come from the fp32 masters); under
ZeRO-3 every forward is a collective (a forward that only some ranks run hangs them all), and
`train.zero3_param_persistence_threshold: 0` makes DeepSpeed partition even a tiny model's
parameters, as it does the paper preset's. Precision is asked of the LAUNCHER (`--mixed_precision`)
and the config keeps `auto`, which must follow it.
"""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_tiny_config
from launching import launch_two
from lpasrn.distributed.sync import state_hash

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(900)]

STAGES = ("stage0_pretrain", "stage1_warmup", "stage2_lcofl", "stage3_finetune", "stage4_hard_mining")


def bf16_representable(tensor: torch.Tensor) -> bool:
    """True when every value survives a round trip through bf16 (the low 16 bits are zero)."""
    return bool(torch.equal(tensor.to(torch.bfloat16).float(), tensor))


def fingerprints(stage_dir):
    """{epoch: [rank 0, rank 1]} of the per-rank fingerprint files the runner wrote."""
    out = {}
    for path in sorted((stage_dir / "fingerprints").glob("epoch-*.rank-0.json")):
        epoch = int(path.name.split("-")[1].split(".")[0])
        out[epoch] = [json.loads((stage_dir / "fingerprints" / f"epoch-{epoch:04d}.rank-{r}.json").read_text())
                      for r in (0, 1)]
    return out


@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.parametrize("engine", ["ddp", "zero1", "zero2", "zero3"])
def test_every_stage_under_every_engine(engine, precision, tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"
    config = write_tiny_config(tmp_path / "cfg.yaml", tiny_dataset, run_dir, extra=(
        "train: {log_every: 1, image_every: 1, write_fingerprints: true, zero3_param_persistence_threshold: 0}"))
    proc = launch_two(engine, config, "--stage", "all", precision=precision)
    deepspeed_half = engine != "ddp" and precision == "bf16"

    assert f"mixed precision '{precision}' from" in proc.stdout  # `auto` followed the launcher
    if engine == "zero3":
        assert "ZeRO-3 partitions" in proc.stdout
        summary = next(line for line in proc.stdout.splitlines() if "ZeRO-3 partitions" in line)
        partitioned, total = summary.split("partitions ")[1].split(" parameter")[0].split(" of ")
        assert int(partitioned) == int(total) > 0, summary  # every forward all-gathers

    for stage in STAGES:
        stage_dir = run_dir / stage
        prints = fingerprints(stage_dir)
        assert prints, f"{stage}: no fingerprints"
        for epoch, (rank0, rank1) in prints.items():
            assert rank0["num_processes"] == rank1["num_processes"] == 2
            # the dtype the engine really computes in
            expected_param = "torch.bfloat16" if deepspeed_half else "torch.float32"
            assert rank0["param_dtype"] == rank1["param_dtype"] == expected_param, (stage, rank0)
            assert rank0["input_dtype"] == ("torch.bfloat16" if deepspeed_half else "None")
            if engine == "ddp" and precision == "bf16":
                assert "bf16 autocast" in rank0["compute"]
            # statistics, BatchNorm buffers and the fp32 weights each rank would export: identical
            assert rank0["hashes"] == rank1["hashes"], (stage, epoch)
            assert {"buffers", "master_weights", "confusion.counts"} <= set(rank0["hashes"])

        export = stage_dir / "best" / "model.safetensors"
        metrics = json.loads((stage_dir / "best" / "metrics.json").read_text())
        weights = load_file(str(export))
        assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point()), stage
        # the export is what the best epoch's ranks held as fp32 master weights ...
        assert state_hash(weights) == prints[metrics["epoch"]][0]["hashes"]["master_weights"], stage
        # ... and never the bf16 copies: large tensors keep bits that bf16 cannot hold
        large = [k for k, v in weights.items() if v.is_floating_point() and v.numel() >= 64]
        assert large and not all(bf16_representable(weights[k]) for k in large), stage
