"""Two gloo processes: confusion counts, mining state and weights after sync are bitwise identical on
both ranks and equal to one process fed all the samples (DESIGN.md section 6)."""
import json
import random

import pytest
import torch
import torch.distributed as dist

from lpasrn.distributed.confusion import CharacterConfusionTracker
from lpasrn.distributed.miner import HardExampleMiner
from lpasrn.distributed.sampler import CurriculumSampler
from lpasrn.distributed.sync import all_reduce_sum_, is_distributed, rank, state_hash, world_size
from lpasrn.metrics import RecognitionStats
from launching import spawn_gloo

WORLD_SIZE = 2
NUM_SAMPLES = 24
MISREADS = {"B": "8", "O": "0", "S": "5", "1": "I"}


def make_intervals():
    """Fixed observations (sid, truth, prediction), grouped by the sync that follows them."""
    rng = random.Random(11)
    texts = ["ABC1234", "BOS1D23", "SOB0B11", "OBB1S00"]
    intervals = []
    for _ in range(3):
        observations = []
        for _ in range(40):
            sid = rng.randrange(NUM_SAMPLES)
            truth = texts[sid % len(texts)]
            pred = "".join(MISREADS.get(c, c) if rng.random() < sid / NUM_SAMPLES else c for c in truth)
            if rng.random() < 0.1:
                pred = pred[:-1]  # a deleted character
            observations.append((sid, truth, pred))
        intervals.append(observations)
    return intervals


def rank_share(observations, rank_index):
    # uneven, interleaved split: rank 0 gets every third observation, rank 1 the rest
    return [o for i, o in enumerate(observations) if (i % 3 == 0) == (rank_index == 0)]


def run_pipeline(share_of):
    """Feed confusion, miner and recognition stats, syncing after each interval; return the hashes."""
    confusion, miner, stats = CharacterConfusionTracker(), HardExampleMiner(NUM_SAMPLES), RecognitionStats()
    for observations in make_intervals():
        part = share_of(observations)
        sids, truths, preds = [o[0] for o in part], [o[1] for o in part], [o[2] for o in part]
        confusion.update(truths, preds)
        miner.update_from_strings(sids, truths, preds)
        stats.update(truths, preds)
        confusion.sync()
        miner.sync()
    stats.all_reduce_()
    sampler = CurriculumSampler(lambda e: miner.sampling_weights(0.25), NUM_SAMPLES, batch_size=4,
                                rank=0, world_size=WORLD_SIZE, seed=5)  # the global draw is rank-free
    return {
        "confusion": state_hash(confusion.counts),
        "class_weights": state_hash(confusion.class_weights()),
        "miner": state_hash(miner.state_dict()),
        "weights": state_hash(miner.sampling_weights(0.25)),
        "global_draw": sampler.global_draw(1).tolist(),
        "stats": state_hash(stats.as_tensor()),
    }


def _worker(rank_index, out_dir):
    assert is_distributed() and world_size() == WORLD_SIZE and rank() == rank_index
    floats = torch.tensor([0.5, 1.25], dtype=torch.float32) * (rank_index + 1)
    assert all_reduce_sum_(floats).tolist() == [1.5, 3.75] and floats.dtype == torch.float32
    flags = torch.tensor([True, rank_index == 0])
    all_reduce_sum_(flags)
    assert flags.tolist() == [True, True]
    hashes = run_pipeline(lambda observations: rank_share(observations, rank_index))
    sampler = CurriculumSampler(lambda e: torch.ones(NUM_SAMPLES, dtype=torch.float64), NUM_SAMPLES,
                                batch_size=4, rank=rank_index, world_size=WORLD_SIZE, seed=5)
    sampler.set_epoch(1)
    hashes["slice"] = list(sampler)
    gathered = [None] * WORLD_SIZE
    dist.all_gather_object(gathered, hashes)
    with open(f"{out_dir}/rank{rank_index}.json", "w") as handle:
        json.dump(gathered, handle)


@pytest.mark.distributed
@pytest.mark.timeout(180)
def test_two_ranks_sync_to_the_single_process_state(tmp_path):
    spawn_gloo(_worker, tmp_path, str(tmp_path), world_size=WORLD_SIZE, timeout_s=60)
    single = run_pipeline(lambda observations: observations)  # one process, every sample
    views = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    assert views[0] == views[1]  # both ranks gathered the same thing
    per_rank = views[0]
    assert len(per_rank) == WORLD_SIZE
    for key in ("confusion", "class_weights", "miner", "weights", "stats"):
        assert per_rank[0][key] == per_rank[1][key] == single[key], key
    # the draw of the synced weights is the single process's draw; the rank slices partition it
    assert per_rank[0]["global_draw"] == per_rank[1]["global_draw"] == single["global_draw"]
    slices = [per_rank[r]["slice"] for r in range(WORLD_SIZE)]
    assert len(slices[0]) == len(slices[1]) == NUM_SAMPLES // 2
    uniform = CurriculumSampler(lambda e: torch.ones(NUM_SAMPLES, dtype=torch.float64), NUM_SAMPLES,
                                batch_size=4, rank=0, world_size=WORLD_SIZE, seed=5)
    assert slices[0] + slices[1] == uniform.global_draw(1).tolist()
