"""Rendering the default dataset is not tied to a collective's timeout: with a 3 s gloo timeout and a
main rank that renders for longer than that, the other rank waits on the file system and both then
meet at a barrier. A failed render reaches the waiting rank as a clear error instead of a hang."""
import datetime
import json
import socket
import time

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from lpasrn.config import DataConfig
from lpasrn.data.prepare import ensure_dataset
from lpasrn.data.shards import load_manifest
from lpasrn.errors import LpasrnError

WORLD_SIZE, TIMEOUT_S, MAIN_DELAY_S = 2, 3, 6


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, port: int, data_dir: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    try:
        cfg = DataConfig(dir=data_dir, synthesize_if_missing=True, synth_train=6, synth_val=2, synth_test=2,
                         synth_shard_size=4)
        started = time.monotonic()
        if rank == 0:
            time.sleep(MAIN_DELAY_S)  # a render longer than the collective timeout
        ensure_dataset(cfg, is_main=rank == 0, poll_s=0.2)
        dist.barrier()
        waited = time.monotonic() - started
        counts = {name: s["num_samples"] for name, s in load_manifest(data_dir)["splits"].items()}
        with open(f"{out_dir}/rank{rank}.json", "w") as out:
            json.dump({"waited": waited, "counts": counts}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.timeout(240)
def test_waiting_rank_outlives_the_collective_timeout(tmp_path):
    mp.spawn(_rank_main, args=(_free_port(), str(tmp_path / "synthetic"), str(tmp_path)), nprocs=WORLD_SIZE,
             join=True)
    views = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    assert views[1]["waited"] > TIMEOUT_S + 1  # it waited longer than a barrier could have
    assert views[0]["counts"] == views[1]["counts"] == {"train": 6, "val": 2, "test": 2}


def test_failed_render_is_reported_to_the_waiting_rank(tmp_path):
    data = tmp_path / "synthetic"
    data.mkdir()
    (data / "stray.txt").write_text("not a dataset")
    cfg = DataConfig(dir=str(data), synthesize_if_missing=True)
    with pytest.raises(LpasrnError, match="not an lpasrn dataset"):
        ensure_dataset(cfg, is_main=True)
    with pytest.raises(LpasrnError, match="main process could not render.*not an lpasrn dataset"):
        ensure_dataset(cfg, is_main=False, poll_s=0.05)
