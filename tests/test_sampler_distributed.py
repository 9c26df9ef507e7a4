"""Two gloo processes: the weighted sampler's epoch draw is identical on both ranks and equal to one
process's draw, for more samples than torch.multinomial takes (2^24), whatever the other ranks'
weights are (rank 0 draws and broadcasts)."""
import pytest
import torch

from lpasrn.distributed.sampler import CurriculumSampler
from launching import spawn_gloo

WORLD_SIZE = 2
NUM_SAMPLES = 2**24 + 96  # torch.multinomial refuses more than 2^24 categories
BATCH = 64
EPOCH = 3


def simulated_weights() -> torch.Tensor:
    """Float64 weights with most of the mass above id 2^24, a few zeros among them."""
    weights = torch.linspace(0.5, 1.5, NUM_SAMPLES, dtype=torch.float64)
    weights[-96:] = 1.0e6
    weights[-96::7] = 0.0
    return weights


def _worker(rank_index, out_dir):
    weights = simulated_weights()
    if rank_index == 1:
        # a rank whose float weights came out differently (another CPU's vectorised exp, or
        # here simply other weights): it must still draw what rank 0 draws
        weights = weights.flip(0).contiguous()
    sampler = CurriculumSampler(lambda e: weights, NUM_SAMPLES, BATCH, rank_index, WORLD_SIZE, seed=9)
    sampler.set_epoch(EPOCH)
    torch.save(sampler.rank_slice(), f"{out_dir}/slice{rank_index}.pt")


@pytest.mark.distributed
@pytest.mark.timeout(600)
def test_two_ranks_draw_one_process_draw_beyond_two_to_the_24(tmp_path):
    spawn_gloo(_worker, tmp_path, str(tmp_path), world_size=WORLD_SIZE, timeout_s=120)
    slices = [torch.load(tmp_path / f"slice{r}.pt") for r in range(WORLD_SIZE)]
    weights = simulated_weights()
    reference = CurriculumSampler(lambda e: weights, NUM_SAMPLES, BATCH, 0, WORLD_SIZE, seed=9).global_draw(EPOCH)
    assert reference.numel() == (NUM_SAMPLES // (BATCH * WORLD_SIZE)) * BATCH * WORLD_SIZE
    assert len(slices[0]) == len(slices[1]) == reference.numel() // 2
    assert torch.equal(torch.cat(slices), reference)  # disjoint halves of the one-process draw
    assert int((reference >= 2**24).sum()) > reference.numel() // 2  # ids beyond 2^24 are drawn
    assert not bool((weights[reference] == 0).any())  # zero weights never
