"""The default dataset, rendered when missing, without tying the render to a collective's timeout.

Why: rendering runs on the main process only. If the other ranks waited for it at a barrier, a
render longer than the process group's timeout (10 minutes under NCCL by default) would kill the
job. Here they wait on the file system instead: they poll for `manifest.json` (written last and
atomically by the shard writer) or for a failure marker the main process writes when the render
fails, and print what they wait for every minute. Only then do all ranks meet at a barrier, which
is now immediate. For large sets, rendering before launch is still faster (`lpasrn data synth`,
printed in the message), since a render does not use the other ranks' cores.
"""
from __future__ import annotations

import time
from pathlib import Path

from lpasrn.data.shards import MANIFEST_NAME
from lpasrn.errors import LpasrnError

WAIT_LOG_EVERY_S = 60.0


def failure_marker(data_dir) -> Path:
    """Sibling of the data folder (inside it, a leftover would make the folder look like a broken dataset)."""
    data_dir = Path(data_dir)
    return data_dir.with_name(f".{data_dir.name}.render-failed")


def synth_command(d) -> list[str]:
    return ["data", "synth", "--out", str(d.dir), "--train", str(d.synth_train), "--val", str(d.synth_val),
            "--test", str(d.synth_test), "--seed", str(d.synth_seed), "--degradation", d.synth_degradation,
            "--shard-size", str(d.synth_shard_size)]


def _render(d) -> None:
    # Not lpasrn.cli.main: that ends the process group when the command returns (lifecycle.py),
    # which inside a training run would leave the main rank without one.
    from lpasrn.cli import build_parser

    if Path(d.dir).exists() and any(Path(d.dir).iterdir()):
        raise LpasrnError(f"{d.dir} exists but has no {MANIFEST_NAME}: not an lpasrn dataset; point "
                          "data.dir elsewhere or create shards with `lpasrn data synth`/`lpasrn data import`")
    total = d.synth_train + d.synth_val + d.synth_test
    print(f"no dataset in {d.dir}: rendering the built-in synthetic plates ({d.synth_train}/{d.synth_val}/"
          f"{d.synth_test}, seed {d.synth_seed}) on the main process; for {total} plates it is faster to "
          f"render before launch: lpasrn {' '.join(synth_command(d))}", flush=True)
    args = build_parser().parse_args(synth_command(d))
    if args.func(args) != 0:
        raise LpasrnError(f"could not render the synthetic dataset into {d.dir}")


def ensure_dataset(d, is_main: bool, poll_s: float = 1.0) -> None:
    """Render `d.dir` on the main process when missing (d.synthesize_if_missing); the others poll the
    file system until it is there or the main process reports a failure.

    # NOTE: call on all ranks, before any collective that needs the data; no collective inside.
    """
    manifest, marker = Path(d.dir) / MANIFEST_NAME, failure_marker(d.dir)
    if manifest.is_file() or not d.synthesize_if_missing:
        return
    if is_main:
        marker.unlink(missing_ok=True)
        try:
            _render(d)
        except BaseException as err:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"{type(err).__name__}: {err}\n")
            raise
        return
    started = last_log = time.monotonic()
    while not manifest.is_file():
        if marker.is_file():
            raise LpasrnError(f"the main process could not render {d.dir}: {marker.read_text().strip()}")
        if time.monotonic() - last_log >= WAIT_LOG_EVERY_S:
            last_log = time.monotonic()
            print(f"waiting for the main process to render {d.dir} ({last_log - started:.0f} s); "
                  f"data.dir must be on a file system every node sees", flush=True)
        time.sleep(poll_s)
