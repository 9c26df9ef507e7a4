"""A training step with at most 2 host synchronisations (issue 13, part 3): the runner's own
train_step in every stage, the loss terms fetched in one transfer, the non-finite decision taken
after backward from the gradient norm."""
from pathlib import Path

import pytest
import torch

from conftest import write_tiny_config
from lpasrn.bench.host_syncs import WARMUP_STEPS, count_conversions, runner_for, step_syncs
from lpasrn.config import load_config
from lpasrn.data.readers import IndexedPlateDataset, collate
from lpasrn.train.objective import fetch_terms, grad_norm_finite, poison_nonfinite
from lpasrn.train.stages import STAGES


def tiny_batch(data_dir, size=8):
    dataset = IndexedPlateDataset(data_dir, "train")
    return collate([dataset[i] for i in range(size)])


def test_fetch_terms_is_one_transfer():
    terms = {"l1": torch.tensor(0.5), "lcofl": torch.tensor(1.5), "loss": torch.tensor(2.0, dtype=torch.float64)}
    with count_conversions() as counter:
        values = fetch_terms(terms)
    assert counter[0] == 1
    assert values == {"l1": 0.5, "lcofl": 1.5, "loss": 2.0}


def test_poisoned_loss_gives_nan_gradients_only_when_not_finite():
    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    # a constant NaN term has gradient 0: without the poisoning the gradients would look finite
    bad = (weight ** 2).sum() + torch.tensor(float("nan"))
    poison_nonfinite(bad).backward()
    assert torch.isnan(weight.grad).all()
    assert not grad_norm_finite(torch.nn.utils.clip_grad_norm_([weight], float("inf")))
    weight.grad = None
    good = (weight ** 2).sum()
    out = poison_nonfinite(good)
    out.backward()
    assert out.item() == 5.0 and weight.grad.tolist() == [2.0, 4.0]
    assert grad_norm_finite(torch.nn.utils.clip_grad_norm_([weight], float("inf")))


@pytest.mark.timeout(600)
def test_train_step_has_at_most_two_host_syncs_in_every_stage(tiny_dataset, tmp_path):
    from lpasrn.train.pipeline import make_accelerator

    steps = 3
    config = write_tiny_config(tmp_path / "cfg.yaml", tiny_dataset, tmp_path / "run")
    cfg = load_config(config, [f"train.log_every={steps + WARMUP_STEPS}", "train.image_every=1000000"])
    accelerator = make_accelerator(cfg)
    batch = tiny_batch(tiny_dataset)
    for spec in STAGES:
        runner = runner_for(cfg, spec, accelerator, tmp_path)
        counts = step_syncs(runner, batch, steps)
        # one for the non-finite decision every step, one more on the logging step (the last)
        assert counts == [1] * (steps - 1) + [2], (spec.prefix, counts)
        if runner.stage_cfg.update_confusion and spec.uses_generator:
            assert len(runner.stats.pending) == 8 * (steps + 2)  # readings kept, counted at the fixed point
            runner.stats.sync()
            assert len(runner.stats.pending) == 0 and int(runner.stats.confusion.counts.sum()) > 0


def _nan_on_one_rank_worker(rank_index, port, data_dir, tmp, out_dir):
    import json
    import os

    from lpasrn.distributed.sync import state_hash
    from lpasrn.train.pipeline import make_accelerator

    os.environ.update({"RANK": str(rank_index), "LOCAL_RANK": str(rank_index), "WORLD_SIZE": "2",
                       "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "ACCELERATE_USE_CPU": "1"})
    torch.set_num_threads(1)
    cfg = load_config(write_tiny_config(Path(tmp) / f"cfg{rank_index}.yaml", data_dir, Path(tmp) / "run"))
    accelerator = make_accelerator(cfg)
    assert accelerator.num_processes == 2
    runner = runner_for(cfg, STAGES[1], accelerator, Path(tmp) / f"rank{rank_index}")  # warmup: L1
    net = accelerator.unwrap_model(runner.model)
    batch = tiny_batch(data_dir, 4)
    poisoned = dict(batch, hr=batch["hr"].clone())
    if rank_index == 1:
        poisoned["hr"][0, 0, 0, 0] = float("nan")  # this rank's loss only is NaN
    before = state_hash(net.state_dict())
    runner.train_step(poisoned)
    skipped = {"state": state_hash(net.state_dict()), "unchanged": state_hash(net.state_dict()) == before,
               "nonfinite_total": runner.state.nonfinite_total, "global_step": runner.state.global_step}
    runner.train_step(batch)
    stepped = {"state": state_hash(net.state_dict()), "changed": state_hash(net.state_dict()) != before,
               "global_step": runner.state.global_step, "streak": runner.state.nonfinite_streak}
    Path(out_dir, f"rank{rank_index}.json").write_text(json.dumps({"skipped": skipped, "stepped": stepped}))
    torch.distributed.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_nan_on_one_rank_skips_the_step_on_both(tiny_dataset, tmp_path):
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_nan_on_one_rank_worker, args=(port, str(tiny_dataset), str(tmp_path), str(tmp_path)),
             nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for view in ranks:
        assert view["skipped"] == {**view["skipped"], "unchanged": True, "nonfinite_total": 1, "global_step": 0}
        assert view["stepped"]["changed"] and view["stepped"]["global_step"] == 1 and view["stepped"]["streak"] == 0
    assert ranks[0]["skipped"]["state"] == ranks[1]["skipped"]["state"]
    assert ranks[0]["stepped"]["state"] == ranks[1]["stepped"]["state"]
