import os

import pytest
import torch

# Two cores here: keep each test process to one intra-op thread so multi-process tests do not
# oversubscribe the machine (and results do not depend on thread scheduling).
torch.set_num_threads(1)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def rng_seed():
    torch.manual_seed(0)
    return 0


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A tiny synthetic dataset (48 train / 16 val / 16 test plates, shards of 16) for runner tests."""
    from lpasrn.data.shards import DatasetWriter
    from lpasrn.data.synth import synth_records

    out = tmp_path_factory.mktemp("data") / "synthetic"
    with DatasetWriter(out, {"generator": "synthetic", "seed": 0}, shard_size=16) as writer:
        for split, count in (("train", 48), ("val", 16), ("test", 16)):
            for record in synth_records(count, 0, split, degradation="realistic"):
                writer.write(split, record)
        writer.close()
    return out


def write_tiny_config(path, data_dir, run_dir, extra: str = "") -> str:
    """A YAML config for tiny CPU runs of the runner: tiny presets, 1 epoch per stage, no W&B."""
    path.write_text(f"""
experiment: test
seed: 0
run_dir: {run_dir}
data: {{dir: {data_dir}, batch_size: 16, num_workers: 0}}
model: {{generator_preset: tiny, ocr_preset: tiny, use_lightweight_embedder: true}}
stages:
  pretrain: {{epochs: 1, lr: 1.0e-3, loss_components: [ctc], freeze_ocr: false}}
  warmup: {{epochs: 1, lr: 1.0e-3, loss_components: [l1]}}
  lcofl: {{epochs: 1, lr: 1.0e-3, loss_components: [l1, lcofl, ctc_sr], update_confusion: true}}
  finetune: {{epochs: 1, lr: 1.0e-4, ocr_lr: 3.0e-4, loss_components: [l1, lcofl, ctc_hr], freeze_ocr: false,
              update_confusion: true}}
  hard_mining: {{epochs: 2, lr: 1.0e-4, loss_components: [l1, lcofl, embedding], update_confusion: true,
                 warmup_fraction: 0.34}}
train: {{log_every: 1, image_every: 2}}
tracking: {{wandb: off, num_image_samples: 4}}
{extra}
""")
    return str(path)


def corrupt_hr(data_dir, sids, split: str = "train") -> list[str]:
    """Write garbage (a PNG signature, then zeros) over the HR image bytes of each sample in `sids`,
    in place and at the same size, found through the binary index; returns their 'shard:key' names."""
    from lpasrn.data.shard_index import split_index

    index = split_index(data_dir, split)
    names = []
    for sid in sids:
        shard_index, offsets, sizes = index.location(sid)
        shard, offset, size = index.shard_names[shard_index], int(offsets[0]), int(sizes[0])
        with open(data_dir / shard, "r+b") as f:
            f.seek(offset)
            f.write(b"\x89PNG garbage" + b"\x00" * (size - 12))
        names.append(f"{shard}:{split}-{sid:08d}")
    return names
