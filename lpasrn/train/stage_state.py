"""Statistics a stage accumulates while it trains: the character confusion matrix (LCOFL's class
weights) and, in the hard-mining stage, the per-sample difficulty miner.

Both keep local deltas that are summed across ranks at fixed points (`sync`), so after a sync every
rank holds the same state, equal to what one process would have counted over the same samples.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from lpasrn.data.shards import load_manifest, split_entry
from lpasrn.distributed.confusion import CharacterConfusionTracker, PendingReadings
from lpasrn.distributed.miner import HardExampleMiner
from lpasrn.errors import LpasrnError
from lpasrn.models.ocr_arch import greedy_decode
from lpasrn.train.checkpoint import CONFUSION_FILE, read_weights
from lpasrn.train.lockstep import select_rows, with_stand_in

log = logging.getLogger(__name__)


class StageStatistics:
    def __init__(self, cfg, spec, stage_cfg, accelerator, stage_dir):
        self.cfg, self.spec, self.stage_cfg, self.acc = cfg, spec, stage_cfg, accelerator
        self.confusion = CharacterConfusionTracker()
        self.pending = PendingReadings()  # the training steps' readings, counted at the fixed points
        self.miner: HardExampleMiner | None = None
        if spec.sampler == "weighted":
            num_train = split_entry(load_manifest(cfg.data.dir), "train", cfg.data.dir)["num_samples"]
            mining = stage_cfg.hard_mining
            self.miner = HardExampleMiner(num_train, mining.ema_momentum, mining.difficulty_alpha)

    def update(self, sids: torch.Tensor, truths: list[str], best_class: torch.Tensor, emitted: torch.Tensor) -> None:
        """Keep a step's greedy paths (ocr_arch.greedy_paths) on the device: no host sync, no
        communication inside the training loop; counted by `flush`."""
        if self.stage_cfg.update_confusion or self.miner is not None:
            self.pending.add(sids, truths, best_class, emitted)

    def flush(self) -> None:
        """Decode and count the pending readings into the local deltas (one transfer; local only)."""
        sids, truths, readings = self.pending.drain()
        if not truths:
            return
        if self.stage_cfg.update_confusion:
            self.confusion.update(truths, readings)
        if self.miner is not None:
            self.miner.update_from_strings(sids, truths, readings)

    def sync(self) -> None:
        """# NOTE: call on all ranks at the same points (epoch end, before every checkpoint):
        one all-reduce each for the confusion counts and the miner counters."""
        self.flush()
        self.confusion.sync()
        if self.miner is not None:
            self.miner.sync()

    def class_weights(self) -> torch.Tensor:
        return self.confusion.class_weights(self.cfg.loss.confusion_threshold, self.cfg.loss.class_weight_step)

    def carry_confusion(self, export_dir: Path | None) -> bool:
        """Start from the counts the previous stage exported beside its weights; False if it has none.
        # NOTE: every rank reads the same file, so every rank starts with the same counts."""
        path = None if export_dir is None else Path(export_dir) / CONFUSION_FILE
        if path is None or not path.is_file():
            return False
        counts = read_weights(path, "confusion counts").get("counts")
        if counts is None:
            raise LpasrnError(f"{path}: holds no 'counts' tensor")
        if counts.shape != self.confusion.counts.shape:
            raise LpasrnError(f"{path}: confusion counts of shape {tuple(counts.shape)}, expected "
                              f"{tuple(self.confusion.counts.shape)}")
        self.confusion.counts = counts.to(self.confusion.counts.dtype).clone()
        return True

    def sync_for_checkpoint(self) -> None:
        """Before a checkpoint: the confusion counts are plain integer sums, so syncing them mid-epoch
        changes nothing the run computes later; the miner is NOT synced (its EMA would take a step
        the uninterrupted run never takes), `tensors` stores its summed deltas instead.
        # NOTE: call on all ranks (one all-reduce)."""
        self.flush()  # pending readings first, or their confusion deltas would miss the sync
        self.confusion.sync()

    def tensors(self) -> dict[str, torch.Tensor]:
        """Checkpoint tensors. # NOTE: call on all ranks: the miner's deltas are summed over ranks."""
        self.flush()  # nothing pending may be left out of a checkpoint
        out = {f"confusion.{k}": v for k, v in self.confusion.state_dict().items()}
        if self.miner is not None:
            state = self.miner.checkpoint_state()
            out.update({f"miner.{k}": state[k] for k in ("counters", "deltas", "ema_accuracy")})
        return out

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """# NOTE: the summed miner deltas go to the main process only (the next sync adds them to
        every rank once); other ranks start the interval from zero."""
        self.confusion.load_state_dict({k: tensors[f"confusion.{k}"] for k in ("counts", "deltas")})
        if self.miner is not None and "miner.counters" in tensors:
            self.miner.load_state_dict({"num_samples": tensors["miner.counters"].shape[1],
                                        "counters": tensors["miner.counters"], "deltas": tensors["miner.deltas"],
                                        "ema_accuracy": tensors["miner.ema_accuracy"]},
                                       holds_deltas=self.acc.is_main_process)

    @torch.no_grad()
    def score_training_split(self, forward, to_device, batches, stand_in: dict, net, read_errors,
                             miner: bool = True, confusion: bool = False) -> None:
        """Eval-mode pass over the training split before the stage's first step: the miner's
        difficulties (the first weighted draw knows which plates are hard) and/or the confusion
        counts (class weights from the first epoch). Every sample once, lock-step batches (`forward`
        is a collective under ZeRO-3), one sync at the end; corrupt samples are counted in
        `read_errors` like the training batches'. # NOTE: call on all ranks."""
        was_training = net.training
        net.eval()
        for batch in batches:
            read_errors.record(batch.get("corrupt", []))
            batch = to_device(with_stand_in(batch, stand_in))
            out = forward(net, batch, ("ocr_sr",))
            rows = torch.nonzero(batch["weight"] > 0).reshape(-1)
            if rows.numel() == 0:
                continue
            readings, _ = greedy_decode(out["ocr_sr"].index_select(0, rows).float())
            real = select_rows({"sid": batch["sid"], "text": batch["text"]}, rows)
            if miner:
                self.miner.update_from_strings(real["sid"].cpu(), real["text"], readings)
            if confusion:
                self.confusion.update(real["text"], readings)
        net.train(was_training)
        if miner:
            self.miner.sync()
        if confusion:
            self.confusion.sync()

    def log(self, step: int) -> None:
        """Top confusions, the heatmap and (hard mining) the hardest samples and difficulty histogram."""
        if not self.acc.is_main_process:
            return
        prefix = self.spec.prefix
        if self.stage_cfg.update_confusion and int(self.confusion.counts.sum()) > 0:
            pairs = self.confusion.top_confusions(5)
            self.acc.log({f"{prefix}/top_confusions": ", ".join(f"{t}->{p}:{n}" for t, p, n in pairs)}, step=step)
            for tracker in self.acc.trackers:
                if tracker.name == "tensorboard":
                    tracker.writer.add_image(f"{prefix}/confusion", self.confusion.heatmap_image(), step,
                                             dataformats="HWC")
        if self.miner is not None and int(self.miner.seen.sum()) > 0:
            difficulty = self.miner.difficulty()
            self.acc.log({f"{prefix}/mean_difficulty": float(difficulty.mean())}, step=step)
            rows = self.miner.hardest(5)
            self.acc.log({f"{prefix}/hardest": "; ".join(f"sid {r['sid']} d={r['difficulty']:.2f}" for r in rows)},
                         step=step)
            for tracker in self.acc.trackers:
                if tracker.name == "tensorboard":
                    tracker.writer.add_histogram(f"{prefix}/difficulty", difficulty.numpy(), step)
