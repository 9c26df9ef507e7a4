"""Shared builders for the evaluation/export tests: a tiny trained export and a dataset with tracks.

Both are built once per pytest session (cached under the session's base temp dir), whichever test
module asks first.
"""
from __future__ import annotations

from pathlib import Path

from conftest import write_tiny_config

TRACKS, FRAMES_PER_TRACK, SINGLES = 4, 5, 8


def tiny_export(tiny_dataset: Path, tmp_path_factory) -> Path:
    """Stage 0 then stage 1 of a tiny run; stage 1's best export holds a generator and an OCR."""
    root = tmp_path_factory.getbasetemp() / "eval_tiny_run"
    export = root / "run" / "stage1_warmup" / "best"
    if (export / "model.safetensors").is_file():
        return export
    from lpasrn.train.train_cli import main as train_main

    root.mkdir(parents=True, exist_ok=True)
    config = write_tiny_config(root / "cfg.yaml", tiny_dataset, root / "run")
    for stage in ("0", "1"):
        assert train_main(["--config", config, "--stage", stage]) == 0
    return export


def tracked_dataset(tmp_path_factory) -> Path:
    """A test split of 28 plates in shards of 4: 4 tracks x 5 frames (one text per track, LR frames
    degraded with different seeds) and 8 plates without a track, from two sources."""
    out = tmp_path_factory.getbasetemp() / "eval_tracked" / "shards"
    if (out / "manifest.json").is_file():
        return out
    from lpasrn.data.degrade import degrade
    from lpasrn.data.records import PlateRecord
    from lpasrn.data.shards import DatasetWriter
    from lpasrn.data.synth import synth_record

    with DatasetWriter(out, {"generator": "test-tracks", "seed": 1}, shard_size=4) as writer:
        for track in range(TRACKS):
            base = synth_record(1, "test", track, degradation="realistic")
            for frame in range(FRAMES_PER_TRACK):
                lr = degrade(base.hr, "realistic", 1000 * track + frame)
                writer.write("test", PlateRecord(hr=base.hr, lr=lr, text=base.text, layout=base.layout,
                                                 source=f"tracks:t{track}/lr-{frame}.png", track=f"t{track}"))
        for index in range(SINGLES):
            writer.write("test", synth_record(1, "test", 100 + index, degradation="realistic"))
        writer.close()
    return out
