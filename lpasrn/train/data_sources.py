"""Where a stage's batches come from.

Training uses the resampled stream (every rank yields the same number of batches, so no rank waits
at a gradient all-reduce the others never reach) or, in hard mining, one global weighted draw per
epoch read through the indexed reader. Validation and scoring batches are in lockstep.py.
"""
from __future__ import annotations

from torch.utils.data import DataLoader

from lpasrn.data.readers import IndexedPlateDataset, StreamReader, collate
from lpasrn.distributed.preemption import worker_ignores_stop_signals
from lpasrn.distributed.sampler import CurriculumSampler


class TrainBatches:
    def __init__(self, cfg, spec, stage_cfg, accelerator, stats):
        self.cfg, self.stage_cfg, self.acc, self.stats = cfg, stage_cfg, accelerator, stats
        data = cfg.data
        if spec.sampler == "weighted":
            self.dataset = IndexedPlateDataset(data.dir, "train")
            self.weights = stats.miner.sampling_weights(0.0)
            self.sampler = CurriculumSampler(lambda epoch: self.weights, len(self.dataset), data.batch_size,
                                             accelerator.process_index, accelerator.num_processes, cfg.seed)
            self.stream = None
        else:
            # NOTE: resampled mode: every rank yields exactly the same number of batches per epoch.
            self.stream = StreamReader(data.dir, "train", data.batch_size, seed=cfg.seed,
                                       rank=accelerator.process_index, world_size=accelerator.num_processes,
                                       num_workers=data.num_workers, mode="resampled")

    def for_epoch(self, epoch: int):
        """Batches of this rank for `epoch`; the order depends only on (seed, epoch, rank)."""
        if self.stream is not None:
            self.stream.set_epoch(epoch)
            return self.stream
        self.sampler.set_epoch(epoch)
        return DataLoader(self.dataset, batch_size=self.cfg.data.batch_size, sampler=self.sampler,
                          collate_fn=collate, num_workers=self.cfg.data.num_workers, drop_last=True,
                          worker_init_fn=worker_ignores_stop_signals)

    def after_epoch(self, epoch: int) -> None:
        """Re-weight every `reweight_interval` epochs from the synced miner (identical on all ranks)."""
        if self.stream is not None:
            return
        mining = self.stage_cfg.hard_mining
        if (epoch + 1) % mining.reweight_interval == 0:
            progress = min(1.0, (epoch + 1) / max(1, self.stage_cfg.epochs - 1))
            self.weights = self.stats.miner.sampling_weights(progress)

    @property
    def read_errors(self):
        return self.stream.read_errors if self.stream is not None else None


def fixed_val_samples(cfg, count: int) -> dict | None:
    """The first `count` validation plates (by sid), the same in every image grid of the run."""
    dataset = IndexedPlateDataset(cfg.data.dir, "val")
    count = min(count, len(dataset))
    if count == 0:
        return None
    batch = collate([dataset[sid] for sid in range(count)])
    dataset.close()
    return batch
