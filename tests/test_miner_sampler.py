import math
import random

import pytest
import torch
from scipy.stats import chisquare

from lpasrn.config import HardMiningConfig, load_config
from lpasrn.distributed.miner import HardExampleMiner, fixed_point_sum
from lpasrn.distributed.sampler import CurriculumSampler, curriculum_progress, epoch_seed, weighted_draw
from lpasrn.train.data_sources import next_draw_weights
from lpasrn.distributed.sync import state_hash
from lpasrn.errors import LpasrnError


def make_intervals(num_samples=30, intervals=3, per_interval=60, seed=0):
    """Observations (sid, truth, pred) per sync interval; low sids are read well, high sids badly."""
    rng = random.Random(seed)
    result = []
    for _ in range(intervals):
        batch = []
        for _ in range(per_interval):
            sid = rng.randrange(num_samples)
            wrong = rng.random() < sid / num_samples
            batch.append((sid, "ABC1234", "A8C1234" if wrong else "ABC1234"))
        result.append(batch)
    return result


def feed(miner, observations, chunk):
    for start in range(0, len(observations), chunk):
        part = observations[start:start + chunk]
        miner.update_from_strings([o[0] for o in part], [o[1] for o in part], [o[2] for o in part])


def test_same_samples_in_other_splits_and_orders_give_bitwise_identical_state():
    intervals = make_intervals()
    reference = HardExampleMiner(30)
    for observations in intervals:
        feed(reference, observations, chunk=len(observations))
        reference.sync()
    # the same samples, reversed and in small chunks, and split between two "ranks" whose deltas
    # are summed the way all_reduce_sum_ sums them
    rank_a, rank_b = HardExampleMiner(30), HardExampleMiner(30)
    for observations in intervals:
        shuffled = list(reversed(observations))
        feed(rank_a, shuffled[::2], chunk=7)
        feed(rank_b, shuffled[1::2], chunk=5)
        rank_a.deltas += rank_b.deltas
        rank_b.deltas.copy_(rank_a.deltas)
        rank_a.sync()
        rank_b.sync()
    for miner in (rank_a, rank_b):
        assert state_hash(miner.state_dict()) == state_hash(reference.state_dict())
        assert state_hash(miner.sampling_weights(0.3)) == state_hash(reference.sampling_weights(0.3))


def test_counters_and_ema_hand_values():
    miner = HardExampleMiner(4, ema_momentum=0.9)
    miner.update([0, 1, 1], [True, True, False], [7, 7, 6], [7, 7, 7])
    assert miner.seen.sum() == 0  # deltas only until sync
    miner.sync()
    assert miner.seen.tolist() == [1, 2, 0, 0]
    assert miner.counter("chars_correct").tolist() == [7, 13, 0, 0]
    assert miner.ema_accuracy[:2].tolist() == [1.0, 0.5]  # first sync: the interval's accuracy
    miner.update([0], [False], [6], [7])
    miner.sync()
    assert miner.ema_accuracy[0].item() == 0.9 * 1.0 + 0.1 * 0.0
    assert miner.ema_accuracy[1].item() == 0.5  # not seen in this interval: unchanged
    difficulty = miner.difficulty()
    assert difficulty.dtype == torch.float64
    assert difficulty[0].item() == 1.0 - 0.9 and difficulty[1].item() == 0.5
    mean_seen = ((1.0 - 0.9) + 0.5) / 2
    assert difficulty[2].item() == difficulty[3].item() == mean_seen  # unseen: mean of the seen ones
    assert torch.equal(HardExampleMiner(3).difficulty(), torch.full((3,), 0.5, dtype=torch.float64))


def test_weights_follow_the_curriculum_and_stay_positive():
    miner = HardExampleMiner(3, difficulty_alpha=2.0)
    miner.update([0, 1, 2], [True, False, True], [7, 3, 7], [7, 7, 7])
    miner.sync()  # sid 0 and 2 easy, sid 1 hard
    start, middle, end = (miner.sampling_weights(p) for p in (0.0, 0.5, 1.0))
    for weights in (start, middle, end):
        assert weights.dtype == torch.float64 and bool((weights > 0).all())
        assert weights.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert start[0] > start[1] and end[1] > end[0]
    assert torch.allclose(middle, torch.full((3,), 1 / 3, dtype=torch.float64))
    assert state_hash(miner.sampling_weights(0.7)) == state_hash(miner.sampling_weights(0.7))
    extreme = HardExampleMiner(3, difficulty_alpha=1e6)
    extreme.load_state_dict(miner.state_dict())
    assert bool((extreme.sampling_weights(1.0) > 0).all())  # never underflows to zero
    with pytest.raises(ValueError):
        miner.sampling_weights(1.5)


def test_hardest_state_dict_and_bad_input():
    miner = HardExampleMiner(5)
    miner.update_from_strings([0, 1, 2, 3], ["ABC1234"] * 4, ["ABC1234", "", "A8C1234", "ABC1234"])
    miner.sync()
    rows = miner.hardest(2)
    assert [row["sid"] for row in rows] == [1, 2]  # equal difficulty: lower sid first
    assert rows[0]["char_acc"] == 0.0 and rows[1]["char_acc"] == 6 / 7 and rows[1]["word_acc"] == 0.0
    assert len(miner.hardest(10)) == 4  # unseen samples are not listed
    miner.update([4], [True], [7], [7])  # unsynced deltas travel with the state
    restored = HardExampleMiner(5)
    restored.load_state_dict(miner.state_dict())
    assert state_hash(restored.state_dict()) == state_hash(miner.state_dict())
    with pytest.raises(ValueError, match="samples"):
        HardExampleMiner(6).load_state_dict(miner.state_dict())
    with pytest.raises(ValueError, match="sids"):
        miner.update([5], [True], [7], [7])


def fixed_weights(values):
    weights = torch.tensor(values, dtype=torch.float64)
    return lambda epoch: weights


def test_rank_slices_partition_the_global_draw():
    weights_fn = fixed_weights([1.0] * 50)
    samplers = [CurriculumSampler(weights_fn, 50, batch_size=4, rank=r, world_size=2, seed=7)
                for r in range(2)]
    for sampler in samplers:
        sampler.set_epoch(3)
        assert len(sampler) == 24 and len(list(sampler)) == 24  # 50 rounded down to 48, halved
    global_draw = samplers[0].global_draw(3)
    assert torch.equal(samplers[1].global_draw(3), global_draw)
    assert list(samplers[0]) + list(samplers[1]) == global_draw.tolist()
    assert not torch.equal(samplers[0].global_draw(4), global_draw)  # epochs differ
    other_seed = CurriculumSampler(weights_fn, 50, batch_size=4, rank=0, world_size=2, seed=8)
    assert not torch.equal(other_seed.global_draw(3), global_draw)
    assert epoch_seed(7, 3) == epoch_seed(7, 3) != epoch_seed(3, 7)


def test_epoch_size_rounding():
    weights_fn = fixed_weights([1.0] * 103)
    assert CurriculumSampler(weights_fn, 103, 4, 0, 2, seed=0).total_size == 96
    assert CurriculumSampler(weights_fn, 103, 4, 1, 2, seed=0, drop_last=False).total_size == 104
    with pytest.raises(ValueError, match="no full global batch"):
        CurriculumSampler(fixed_weights([1.0] * 5), 5, 4, 0, 2, seed=0)
    with pytest.raises(ValueError, match="weights"):
        CurriculumSampler(fixed_weights([1.0] * 5), 8, 4, 0, 2, seed=0).set_epoch(0)


def test_draw_frequencies_match_the_weights():
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    sampler = CurriculumSampler(fixed_weights(values), 10, batch_size=5, rank=0, world_size=2, seed=1234)
    draws = torch.cat([sampler.global_draw(epoch) for epoch in range(300)])
    observed = torch.bincount(draws, minlength=10).double()
    expected = torch.tensor(values, dtype=torch.float64) / sum(values) * draws.numel()
    assert chisquare(observed.numpy(), expected.numpy()).pvalue > 0.001


def easy_and_hard_miner() -> HardExampleMiner:
    miner = HardExampleMiner(40, difficulty_alpha=2.0)
    sids = list(range(40))
    miner.update(sids, [sid < 20 for sid in sids], [7] * 40, [7] * 40)  # 0..19 easy, 20..39 hard
    miner.sync()
    return miner


def hard_share_of(weights: torch.Tensor, epoch: int) -> float:
    sampler = CurriculumSampler(lambda e: weights, 40, batch_size=10, rank=0, world_size=1, seed=0)
    draws = torch.cat([sampler.global_draw(epoch * 100 + k) for k in range(50)])
    return int((draws >= 20).sum()) / draws.numel()


def test_curriculum_moves_from_uniform_to_hard_samples():
    """Through the runner's own schedule (next_draw_weights after each epoch of a 5-epoch stage):
    the first draw is near uniform, every later one favours hard plates more, none favours easy."""
    miner, epochs = easy_and_hard_miner(), 5
    current, hard_share = next_draw_weights(miner, -1, epochs, reweight_interval=1), []
    for epoch in range(epochs):
        hard_share.append(hard_share_of(current, epoch))
        current = next_draw_weights(miner, epoch, epochs, reweight_interval=1)
    assert hard_share[0] == pytest.approx(0.5, abs=0.1)  # progress 0.55: close to uniform
    assert hard_share[-1] > 0.75  # progress 0.95: hard plates drawn about 6x as often as easy ones
    assert all(a < b for a, b in zip(hard_share, hard_share[1:]))
    assert [curriculum_progress(e, 5) for e in range(5)] == pytest.approx([0.55, 0.65, 0.75, 0.85, 0.95])


def test_one_epoch_stage_draws_at_its_midpoint_not_at_the_easy_end():
    """The quickstart's stage 4 (1 epoch, re-weighting every 5): its one draw, made after the
    scoring pass, favours hard plates (the old rule drew it at progress 0, easy plates favoured)."""
    miner = easy_and_hard_miner()
    weights = next_draw_weights(miner, -1, 1, reweight_interval=5)  # the first draw always happens
    assert curriculum_progress(0, 1, span=5) == 0.75
    assert torch.equal(weights, miner.sampling_weights(0.75))
    assert 0.6 < hard_share_of(weights, 0) < 0.85
    assert next_draw_weights(miner, 0, 1, reweight_interval=5) is None  # nothing more to draw


def test_reweight_interval_holds_weights_and_draws_at_the_middle_of_their_window():
    miner, epochs = easy_and_hard_miner(), 10
    kept = [e for e in range(-1, epochs - 1) if next_draw_weights(miner, e, epochs, reweight_interval=5) is None]
    assert kept == [0, 1, 2, 3, 5, 6, 7, 8]  # new weights before epochs 0 and 5 only
    # the draw for epochs 5..9 sits at their middle, 7.5 / 10 of the way from start to end
    assert torch.equal(next_draw_weights(miner, 4, epochs, 5, start=0.5, end=1.0), miner.sampling_weights(0.875))
    assert curriculum_progress(5, epochs, span=5, start=0.2, end=0.6) == pytest.approx(0.5)
    # a window cut by the stage's end: epochs 8..9 of 10 with span 5, middle at 9 / 10
    assert curriculum_progress(8, epochs, span=5) == pytest.approx(0.95)


def test_curriculum_defaults_follow_the_spec():
    mining = HardMiningConfig()
    assert mining.reweight_interval == 5
    assert (mining.curriculum_start, mining.curriculum_end) == (0.5, 1.0)
    with pytest.raises(LpasrnError, match="curriculum_end"):
        load_config(None, ["stages.hard_mining.hard_mining.curriculum_end=1.5"])


def test_checkpoint_between_syncs_does_not_fold_the_interval():
    """A preemption save in the middle of an interval: the restored run, syncing once at the end, has
    the EMA of the uninterrupted run (one step per interval), not the EMA of two intervals."""
    straight = HardExampleMiner(2, ema_momentum=0.9)
    straight.update([0], [True], [7], [7])
    straight.sync()
    straight.update([0, 0], [False, False], [0, 0], [7, 7])  # one interval, two observations
    preempted = HardExampleMiner(2, ema_momentum=0.9)
    preempted.update([0], [True], [7], [7])
    preempted.sync()
    preempted.update([0], [False], [0], [7])
    saved = preempted.checkpoint_state()  # preempted after the first observation of the interval
    resumed, other_rank = HardExampleMiner(2, ema_momentum=0.9), HardExampleMiner(2, ema_momentum=0.9)
    resumed.load_state_dict(saved, holds_deltas=True)
    other_rank.load_state_dict(saved, holds_deltas=False)
    assert int(other_rank.deltas.abs().sum()) == 0  # only one rank carries the interval on
    resumed.update([0], [False], [0], [7])
    straight.sync()
    resumed.sync()
    assert straight.ema_accuracy[0].item() == 0.9  # 0.9 * 1 + 0.1 * 0: one EMA step
    assert state_hash(resumed.state_dict()) == state_hash(straight.state_dict())


def test_fixed_point_sum_is_order_free_and_close():
    values = torch.rand(100_003, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    total = fixed_point_sum(values)
    assert total == fixed_point_sum(values.flip(0)) == fixed_point_sum(values[torch.randperm(100_003)])
    assert total == pytest.approx(math.fsum(values.tolist()), abs=1e-9)
    assert fixed_point_sum(torch.ones(5, dtype=torch.float64)) == 5.0


def test_counters_are_compact():
    miner = HardExampleMiner(1000)
    per_plate = sum(t.element_size() * t.shape[0] if t.dim() == 2 else t.element_size()
                    for t in (miner.counters, miner.deltas, miner.ema_accuracy))
    assert per_plate == 40  # 4 + 4 int32 counters, float64 EMA (was 72)


def test_draw_reaches_ids_beyond_two_to_the_24():
    """torch.multinomial refuses more than 2^24 categories; the inverse-CDF draw takes any N."""
    n = 2**24 + 64
    weights = torch.full((n,), 1e-9, dtype=torch.float64)
    weights[-64:] = 1.0  # almost all mass above 2^24
    weights[-1] = 0.0  # a zero weight is never drawn, even at the very end of the CDF
    draw = weighted_draw(weights, 4096, torch.Generator().manual_seed(0))
    assert int((draw >= 2**24).sum()) > 4000 and int(draw.max()) <= n - 2 and int(draw.min()) >= 0
