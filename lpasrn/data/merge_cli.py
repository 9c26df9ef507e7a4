"""`lpasrn data merge DIR [DIR ...] --out DIR`: several shard sets -> one, to train on several datasets.

`data.dir` names one dataset; merging UFPR's resolutions, or UFPR + RodoSol + synthetic, into one
new shard set keeps every reader, sampler and statistic unchanged. Per split, samples are copied in
input order, so sids are dense 0..N-1 over the union; each sample keeps its `source` (e.g.
`ufpr:...`, `rodosol:...`, so evaluation's `by_source` still reports each dataset) and its track
id is qualified by its input folder name (`<name>/<track>`), since two datasets may use the same
track names. The manifest's settings list the inputs with their formats and per-split counts.
Every input's shards are re-hashed against its manifest first (verify_shards); a damaged input
stops the merge, naming the shard. Built in a hidden sibling folder and renamed when complete, like
`lpasrn data import`.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
from collections import Counter
from pathlib import Path

from PIL import Image

from lpasrn.data.read_indexed import IndexedPlateDataset
from lpasrn.data.records import PlateRecord
from lpasrn.data.shards import DatasetWriter, load_manifest, verify_shards
from lpasrn.errors import LpasrnError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "merge", help="merge shard sets into one (train on several datasets)",
        description=__doc__.split("\n\n", 1)[1])
    parser.add_argument("inputs", metavar="DIR", type=Path, nargs="+", help="shard sets to merge")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="new dataset folder")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard (1000)")
    parser.set_defaults(func=run)


def check_inputs(inputs: list[Path]) -> dict[str, dict]:
    """{input folder name: manifest}; unreadable manifests, shards that fail their sha256 and
    repeated names are errors naming them."""
    manifests: dict[str, dict] = {}
    for path in inputs:
        name = path.resolve().name
        if name in manifests:
            raise LpasrnError(f"two inputs are named {name!r}: track ids are qualified by the input folder "
                              f"name, so rename one")
        manifests[name] = load_manifest(path)  # raises naming the folder when it is no dataset
        problems = verify_shards(path)  # a merge would copy corruption into a dataset that looks whole
        if problems:
            raise LpasrnError(f"input {path} is damaged, nothing merged: " + "; ".join(problems))
    return manifests


def read_record(dataset: IndexedPlateDataset, sid: int, name: str) -> PlateRecord:
    """One stored sample as a PlateRecord, its track qualified by the input's name."""
    _shard, _key, members = dataset.read_members(sid)
    meta = json.loads(members["json"])
    hr, lr = (Image.open(io.BytesIO(members[suffix])).convert("RGB") for suffix in ("hr.png", "lr.png"))
    track = f"{name}/{meta['track']}" if meta.get("track") else None
    return PlateRecord(hr=hr, lr=lr, text=meta["text"], source=meta["source"], layout=meta["layout"],
                       track=track)


def merge(inputs: list[Path], out: Path, shard_size: int = 1000) -> dict:
    """Write the union of `inputs` to `out` (new or empty); returns the manifest."""
    from lpasrn.data.import_cli import check_out_dir, staging_dir

    check_out_dir(out)
    manifests = check_inputs(inputs)
    staging = staging_dir(out)
    shutil.rmtree(staging, ignore_errors=True)
    sources = [{"name": name, "path": str(path.resolve()), "format": manifests[name]["settings"].get("format"),
                "counts": {split: entry["num_samples"] for split, entry in manifests[name]["splits"].items()}}
               for name, path in zip(manifests, inputs)]
    writer = DatasetWriter(staging, {"format": "merge", "inputs": sources}, shard_size=shard_size)
    counts: Counter = Counter()
    try:
        for name, path in zip(manifests, inputs):
            for split in sorted(manifests[name]["splits"]):
                dataset = IndexedPlateDataset(path, split)
                for sid in range(len(dataset)):
                    writer.write(split, read_record(dataset, sid, name))
                    counts[split] += 1
                dataset.close()
        writer.settings["counts"] = dict(sorted(counts.items()))
        manifest = writer.close()
        os.replace(staging, out)
    except BaseException:
        writer.abort()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def run(args: argparse.Namespace) -> int:
    manifest = merge(list(args.inputs), Path(args.out), args.shard_size)
    counts = manifest["settings"]["counts"]
    summary = ", ".join(f"{split} {n}" for split, n in counts.items())
    print(f"merged {len(args.inputs)} dataset(s), {sum(counts.values())} sample(s) ({summary}) into {args.out}")
    return 0
