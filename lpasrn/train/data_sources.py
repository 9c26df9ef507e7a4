"""Where a stage's batches come from.

Training uses the resampled stream (every rank yields the same number of batches, so no rank waits
at a gradient all-reduce the others never reach) or, in hard mining, one global weighted draw per
epoch read through the indexed reader. Validation and scoring batches are in lockstep.py.

Both count and skip corrupt samples the same way: the sample is left out of its batch, named in
`batch["corrupt"]`, and counted in `read_errors`, which the runner reports at the end of the stage.
"""
from __future__ import annotations

import itertools

from torch.utils.data import DataLoader, Dataset, Sampler

from lpasrn.data.read_decode import corrupt_entry
from lpasrn.data.readers import CorruptSampleError, IndexedPlateDataset, ReadErrors, StreamReader, collate
from lpasrn.distributed.preemption import worker_ignores_stop_signals
from lpasrn.distributed.sampler import CurriculumSampler, curriculum_progress


class SkipCorrupt(Dataset):
    """`dataset[sid]`, or a record of why that sample cannot be read (never an exception, which would
    end the stage on this rank only and leave the others waiting in a collective)."""

    def __init__(self, dataset: IndexedPlateDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, sid: int) -> dict:
        try:
            return self.dataset[sid]
        except CorruptSampleError as err:
            return {"corrupt": corrupt_entry(err)}


def collate_skipping(items: list[dict]) -> dict:
    return collate([i for i in items if "corrupt" not in i], [i["corrupt"] for i in items if "corrupt" in i])


class CountedBatches:
    """The weighted loader's batches, recording each batch's corrupt samples in `read_errors` as it
    is yielded (in the main process, whatever num_workers is).

    # NOTE: a batch of corrupt samples is still yielded (smaller, or empty): the sampler gives every
    # rank the same number of batches and the runner steps on each, empty ones with a stand-in.
    """

    def __init__(self, loader: DataLoader, read_errors: ReadErrors):
        self.loader, self.read_errors = loader, read_errors

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.read_errors.record(batch["corrupt"])
            yield batch


def next_draw_weights(miner, finished_epoch: int, epochs: int, reweight_interval: int,
                      start: float = 0.5, end: float = 1.0):
    """The curriculum: after `finished_epoch` (-1: before the first epoch, after the scoring pass),
    the weights of the next epoch's draw, or None to keep the current ones (re-weighting every
    `reweight_interval` epochs, from epoch 0 on). The new weights serve the next
    `reweight_interval` epochs, at the curriculum position of their middle (curriculum_progress).

    # NOTE: the weights are a deterministic function of the synced miner state and of the config,
    # so every rank holds the same ones (and rank 0's draw is broadcast anyway)."""
    following = finished_epoch + 1
    if following % reweight_interval != 0:
        return None
    return miner.sampling_weights(curriculum_progress(following, epochs, reweight_interval, start, end))


class SkipSampler(Sampler[int]):
    """`sampler`'s indices from position `skip` on (the draw is made, the skipped samples are not read)."""

    def __init__(self, sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


class TrainBatches:
    def __init__(self, cfg, spec, stage_cfg, accelerator, stats):
        self.cfg, self.stage_cfg, self.acc, self.stats = cfg, stage_cfg, accelerator, stats
        data = cfg.data
        if spec.sampler == "weighted":
            self.dataset = IndexedPlateDataset(data.dir, "train")
            mining = stage_cfg.hard_mining
            self.weights = next_draw_weights(stats.miner, -1, stage_cfg.epochs, mining.reweight_interval,
                                             mining.curriculum_start, mining.curriculum_end)
            self.sampler = CurriculumSampler(lambda epoch: self.weights, len(self.dataset), data.batch_size,
                                             accelerator.process_index, accelerator.num_processes, cfg.seed)
            self.stream = None
            self._read_errors = ReadErrors()
        else:
            # NOTE: resampled mode: every rank yields exactly the same number of batches per epoch.
            self.stream = StreamReader(data.dir, "train", data.batch_size, seed=cfg.seed,
                                       rank=accelerator.process_index, world_size=accelerator.num_processes,
                                       num_workers=data.num_workers, mode="resampled")

    def steps_per_epoch(self) -> int:
        """Batches of an epoch on every rank (the same on all: resampled stream, or the weighted
        draw's per-rank share), capped by train.max_steps_per_epoch: what the lr schedule spans."""
        if self.stream is not None:
            steps = self.stream.num_batches()
        else:
            steps = len(self.sampler) // self.cfg.data.batch_size
        limit = self.cfg.train.max_steps_per_epoch
        return min(steps, limit) if limit else steps

    def for_epoch(self, epoch: int, skip_batches: int = 0):
        """Batches of this rank for `epoch` from batch `skip_batches` on; the order depends only on
        (seed, epoch, rank), so a mid-epoch resume jumps to its position without decoding the
        batches before it.

        # NOTE: call on all ranks: the weighted sampler's draw is broadcast from rank 0."""
        if self.stream is not None:
            self.stream.set_epoch(epoch, skip_batches)
            return self.stream
        self.sampler.set_epoch(epoch)
        positions = SkipSampler(self.sampler, skip_batches * self.cfg.data.batch_size)
        loader = DataLoader(SkipCorrupt(self.dataset), batch_size=self.cfg.data.batch_size, sampler=positions,
                            collate_fn=collate_skipping, num_workers=self.cfg.data.num_workers, drop_last=True,
                            worker_init_fn=worker_ignores_stop_signals)
        return CountedBatches(loader, self._read_errors)

    def after_epoch(self, epoch: int) -> None:
        """Re-weight from the synced miner on the curriculum's schedule."""
        if self.stream is not None:
            return
        mining = self.stage_cfg.hard_mining
        weights = next_draw_weights(self.stats.miner, epoch, self.stage_cfg.epochs, mining.reweight_interval,
                                    mining.curriculum_start, mining.curriculum_end)
        if weights is not None:
            self.weights = weights

    @property
    def read_errors(self):
        return self.stream.read_errors if self.stream is not None else self._read_errors


def fixed_val_samples(cfg, count: int) -> dict | None:
    """The first `count` validation plates (by sid), the same in every image grid of the run."""
    dataset = IndexedPlateDataset(cfg.data.dir, "val")
    count = min(count, len(dataset))
    if count == 0:
        return None
    batch = collate([dataset[sid] for sid in range(count)])
    dataset.close()
    return batch
