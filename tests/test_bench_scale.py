"""`lpasrn bench scale` at a tiny N on 2 gloo ranks: every key present, values sane, descriptors under
the limit, and the simulated split is a real index (no per-plate JSON)."""
import json
import math

import numpy as np
import pytest

from lpasrn.bench.scale_bench import KEYS
from lpasrn.cli import main


@pytest.mark.distributed
@pytest.mark.timeout(600)
def test_bench_scale_json_keys_and_values(tmp_path):
    out = tmp_path / "scale.json"
    status = main(["bench", "scale", "--plates", "3000", "--ranks", "2", "--read-plates", "600",
                   "--reads", "200", "--nofile", "64", "--work", str(tmp_path / "work"), "--json", str(out)])
    assert status == 0
    result = json.loads(out.read_text())
    assert set(KEYS) <= set(result)
    assert (result["plates"], result["ranks"], result["nofile"]) == (3000, 2, 64)
    for key in ("startup_s", "draw_s", "sync_s", "resume_seek_s", "resume_total_s", "stream_resume_seek_s"):
        assert math.isfinite(result[key]) and 0 < result[key] < 120, (key, result[key])
    assert result["resume_total_s"] >= result["resume_seek_s"]
    assert math.isfinite(result["rss_mb"]) and result["rss_mb"] < 1500
    # 600 plates in shards of 250 is 3 shards; the reader's LRU keeps far fewer than the limit.
    assert 3 <= result["max_open_fds"] <= 64
    assert result["read_samples_per_s"] > 0
    sim = tmp_path / "work" / "sim-3000"
    manifest = json.loads((sim / "manifest.json").read_text())
    assert "members" not in manifest["splits"]["train"]
    records = np.load(sim / "train.index.npy", mmap_mode="r")
    assert records.shape == (3000,) and records["shard"][-1] == 2
