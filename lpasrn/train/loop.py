"""The one training loop every stage runs: train an epoch, sync statistics, validate, keep the best,
checkpoint. A stage only declares what differs (stages.py); this file never branches on stage index.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lpasrn.config import stage_loss
from lpasrn.data.augment import BatchAugment
from lpasrn.data.readers import IndexedPlateDataset, ReadErrors
from lpasrn.distributed.preemption import clear_preemption_request, preemption_requested
from lpasrn.distributed.sync import state_hash
from lpasrn.errors import LpasrnError
from lpasrn.models.ocr_arch import greedy_decode, greedy_paths
from lpasrn.train import checkpoint as ckpt
from lpasrn.train.data_sources import TrainBatches, fixed_val_samples
from lpasrn.train.engine import BufferAverager, engine_info, fp32_master_state_dict, model_forward
from lpasrn.train.lockstep import lockstep_loader
from lpasrn.train.objective import (StageObjective, attach_targets, fetch_terms, grad_norm_finite, outputs_needed,
                                    poison_nonfinite)
from lpasrn.train.schedule import apply_lr, lr_factor
from lpasrn.train.stage_state import StageStatistics
from lpasrn.train.tracking import finish_stage_trackers, log_plate_grid, plate_grid, start_stage_trackers
from lpasrn.train.validate import validate

log = logging.getLogger(__name__)


class Preempted(Exception):
    """Raised after a preemption checkpoint is saved; the entry point exits 0 so SLURM requeues."""


@dataclass
class LoopState:
    epoch: int = 0              # finished epochs
    step_in_epoch: int = 0      # steps done in the unfinished epoch (mid-epoch resume)
    global_step: int = 0
    best_value: float | None = None
    best_epoch: int = -1
    nonfinite_total: int = 0
    nonfinite_streak: int = 0


class StageRunner:
    def __init__(self, spec, cfg, accelerator, model, optimizer, stage_dir: Path, config_text: str,
                 preempt_file: Path | None, frozen_fp32: dict[str, torch.Tensor], init_dir: Path | None = None):
        self.spec, self.cfg, self.acc = spec, cfg, accelerator
        self.stage_cfg = getattr(cfg.stages, spec.name)
        self.model, self.optimizer = model, optimizer
        self.stage_dir, self.config_text, self.preempt_file = stage_dir, config_text, preempt_file
        self.state = LoopState()
        embedder_trains = "embedder" in accelerator.unwrap_model(model).trainable_parts()
        loss_cfg = stage_loss(cfg, spec.name)  # `loss:` with this stage's loss_weights
        self.objective = StageObjective(self.stage_cfg.loss_components, loss_cfg, embedder_trains)
        want = outputs_needed(self.objective.components)  # without emb_* when the embedding is skipped
        if (self.stage_cfg.update_confusion or spec.sampler == "weighted") and spec.uses_generator:
            want |= {"sr", "ocr_sr"}  # readings feed the confusion matrix and the miner
        self.want = tuple(sorted(want))
        self.stats = StageStatistics(cfg, spec, self.stage_cfg, accelerator, stage_dir)
        self.train_batches = TrainBatches(cfg, spec, self.stage_cfg, accelerator, self.stats)
        self.total_steps = self.stage_cfg.epochs * self.train_batches.steps_per_epoch()
        self.init_dir = init_dir  # the previous stage's export (confusion counts to carry), or None
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]  # as built (schedule.param_groups)
        self.lr = self.base_lrs[0]  # the logged lr: the first group's, as apply_lr returns it
        self.epoch = 0
        # training batches only; degraded OCR views only where HR has no other reader (stage 0)
        augment_cfg = cfg.data.augment if self.stage_cfg.augment else replace(cfg.data.augment, enabled=False)
        self.augment = BatchAugment(augment_cfg, cfg.seed, spec.index,
                                    0.0 if spec.uses_generator else self.stage_cfg.ocr_degraded_views)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.engine = engine_info(accelerator, model)
        accelerator.print(f"[{spec.prefix}] {self.engine.summary}")
        net = accelerator.unwrap_model(model)
        self.frozen_fp32 = frozen_fp32
        self.buffers = BufferAverager(net, net.trainable_parts())
        self.grid_samples = fixed_val_samples(cfg, cfg.tracking.num_image_samples)
        # A real sample every rank can run in place of a batch that lost all its samples (weight 0).
        self.stand_in = fixed_val_samples(cfg, 1)
        self.val_read_errors = ReadErrors()
        self._datasets: dict[str, IndexedPlateDataset] = {}

    # ---- state -------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict, dict[str, torch.Tensor]]:
        tensors = self.stats.tensors()
        if self.objective.class_weights is not None:
            tensors["class_weights"] = self.objective.class_weights
        if self.train_batches.stream is None:
            tensors["sampling_weights"] = self.train_batches.weights
        return {"loop": asdict(self.state), "stage": self.spec.name, "world_size": self.acc.num_processes,
                "deepspeed": self.engine.deepspeed}, tensors

    def resume_from(self, path: Path) -> None:
        """# NOTE: call on all ranks: load_state restores each rank's own RNG and (ZeRO) shards."""
        saved, tensors = ckpt.read_trainer_state(path)
        if saved.get("stage") != self.spec.name:
            raise LpasrnError(f"checkpoint {path} belongs to stage {saved.get('stage')!r}, not {self.spec.name!r}")
        ckpt.check_world_size(path, saved, self.acc.num_processes, self.engine.deepspeed)
        weights = path / ckpt.EXPORT_WEIGHTS  # DDP/single-process layout; DeepSpeed keeps its own
        if weights.is_file():
            ckpt.check_weights_match(self.acc.unwrap_model(self.model), weights)
        self.acc.load_state(str(path))
        self.state = LoopState(**saved["loop"])
        self.stats.load_tensors(tensors)
        if "class_weights" in tensors:
            self.objective.class_weights = tensors["class_weights"]
        if "sampling_weights" in tensors:
            self.train_batches.weights = tensors["sampling_weights"]
        self.acc.print(f"[{self.spec.prefix}] resumed from {path} (epoch {self.state.epoch}, "
                       f"step {self.state.step_in_epoch})")

    def save(self, mid_epoch: bool) -> Path:
        """# NOTE: call on all ranks: statistics are summed into the state (the miner without folding
        its interval, so a mid-epoch save leaves the run where the uninterrupted one would be)."""
        self.stats.sync_for_checkpoint()
        state, tensors = self.state_dict()
        name = ckpt.checkpoint_name(self.state.epoch, self.state.step_in_epoch if mid_epoch else None)
        return ckpt.save_checkpoint(self.acc, self.stage_dir / "checkpoints", name, state, tensors,
                                    self.cfg.train.keep_checkpoints, self.config_text)

    # ---- the loop ----------------------------------------------------------------------------
    def run(self) -> Path:
        start_stage_trackers(self.acc, self.cfg, self.stage_dir.parent, self.spec.prefix, self.cfg.to_dict())
        fresh = self.state.epoch == 0 and self.state.step_in_epoch == 0
        if fresh:
            self.start_statistics()
        try:
            for epoch in range(self.state.epoch, self.stage_cfg.epochs):
                self.train_epoch(epoch)
                self.end_epoch(epoch)
            self.log_grid()
            self.report_read_errors()
        finally:
            finish_stage_trackers(self.acc)
        if not (self.stage_dir / "best" / ckpt.EXPORT_WEIGHTS).is_file():
            raise LpasrnError(f"stage {self.spec.prefix} finished without a best export in {self.stage_dir}")
        return self.stage_dir / "best"

    def start_statistics(self) -> None:
        """Before a fresh stage's first step: confusion counts carried from the previous stage (or
        scored), so LCOFL's class weights act from the first epoch; the miner's difficulties scored.
        # NOTE: call on all ranks: every rank reads the same file, the scoring pass is collective."""
        score_miner = self.stats.miner is not None and self.stage_cfg.hard_mining.score_before_stage
        start = self.stage_cfg.confusion_start if self.stage_cfg.update_confusion and self.spec.uses_generator \
            else "none"
        carried = start == "carry" and self.stats.carry_confusion(self.init_dir)
        score_confusion = start == "score" or (start == "carry" and not carried)
        if score_miner or score_confusion:
            self.stats.score_training_split(self.forward, self.to_device, self.lockstep_batches("train"),
                                            self.stand_in, self.acc.unwrap_model(self.model),
                                            self.train_batches.read_errors, score_miner, score_confusion)
        if start != "none":
            self.objective.class_weights = self.stats.class_weights()
            source = "carried from " + str(self.init_dir) if carried else "scored on the training split"
            self.acc.print(f"[{self.spec.prefix}] confusion counts {source}: "
                           f"{int(self.stats.confusion.counts.sum())} readings")
        if score_miner:
            self.train_batches.after_epoch(-1)  # first draw from the scored difficulties

    def train_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # keys the augmentation's draws (with the step and the sample)
        self.model.train()
        skip, limit = self.state.step_in_epoch, self.cfg.train.max_steps_per_epoch or None
        # A mid-epoch resume starts the batches at `skip` (nothing before it is decoded).
        batches = self.train_batches.for_epoch(epoch, skip)
        total = skip + len(batches)
        total = min(total, limit) if limit else total
        bar = tqdm(total=total, initial=skip, desc=f"{self.spec.prefix} epoch {epoch + 1}/{self.stage_cfg.epochs}",
                   # None: tqdm switches itself off when stderr is not a terminal (a log file gets
                   # the one epoch line instead of thousands of carriage-return updates)
                   disable=None if self.acc.is_local_main_process else True, leave=False)
        started, samples = time.perf_counter(), 0
        for index, batch in enumerate(batches, start=skip):
            if limit and index >= limit:
                break
            self.objective.set_position(epoch, index, total)  # the embedding warm-up ramps per step
            self.train_step(batch)
            samples += batch["hr"].shape[0]
            self.state.step_in_epoch = index + 1
            bar.update(1)
            if (index + 1) % self.cfg.train.preempt_poll_every == 0:
                self.check_preemption()
        bar.close()
        self.state.step_in_epoch = 0
        self.record_throughput(epoch, samples, time.perf_counter() - started)

    def record_throughput(self, epoch: int, samples: int, seconds: float) -> None:
        """Training samples/s of this epoch over all ranks (data wait included): logged and kept in
        `throughput.jsonl` beside the checkpoints, which `lpasrn bench dist` reads."""
        rate = samples * self.acc.num_processes / max(seconds, 1e-9)
        self.acc.log({f"{self.spec.prefix}/train_samples_per_s": rate}, step=self.state.global_step)
        if self.acc.is_main_process:
            self.stage_dir.mkdir(parents=True, exist_ok=True)
            with open(self.stage_dir / "throughput.jsonl", "a") as out:
                out.write(json.dumps({"epoch": epoch + 1, "processes": self.acc.num_processes,
                                      "samples_per_s": rate, "seconds": seconds}) + "\n")

    def train_step(self, batch: dict) -> None:
        # NOTE: every rank takes every step: a batch that lost all its samples (corrupt) is replaced
        # by a stand-in with loss weight 0, so the forward/backward collectives still line up.
        empty = batch["hr"].shape[0] == 0
        # before the forward: under DeepSpeed accelerate's backward also takes the optimizer step
        self.lr = apply_lr(self.optimizer, self.base_lrs,
                           lr_factor(self.state.global_step, self.total_steps, self.stage_cfg.lr_schedule,
                                     self.stage_cfg.warmup_fraction, self.stage_cfg.min_lr_ratio))
        source = self.stand_in if empty else batch
        batch = self.to_device(source)
        if not empty:  # seeded by (seed, stage, epoch, step, sid): a resume redraws the same views
            batch = self.augment(batch, source["sid"], self.epoch, self.state.step_in_epoch)
        batch = attach_targets(batch, self.acc.device)
        out = self.forward(self.model, batch, self.want)
        loss, terms = self.objective(out, batch)
        if empty:
            loss = loss * 0.0
        if not self.backward_finite(loss):
            self.skip_nonfinite(terms)
            return
        self.state.nonfinite_streak = 0
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.buffers.average_()  # NOTE: all ranks, every step (see BufferAverager)
        self.state.global_step += 1
        if "ocr_sr" in out and not empty:  # kept on the device; decoded and counted at the fixed points
            best_class, emitted, _ = greedy_paths(out["ocr_sr"].detach())
            self.stats.update(batch["sid"], batch["text"], best_class, emitted)
        if self.state.global_step % self.cfg.train.log_every == 0:
            self.log_terms(terms)
        if self.state.global_step % self.cfg.train.image_every == 0:
            self.log_grid()

    def backward_finite(self, loss: torch.Tensor) -> bool:
        """Backward (and clipping); False when the step must be skipped. One host sync per step.

        # NOTE: every rank must take the same decision to skip, or the next collectives would not
        # line up. DDP: a non-finite loss poisons this rank's gradients, the gradient all-reduce
        # carries the NaN to every rank, and the norm of the averaged gradients decides the same on
        # all ranks with no collective of its own. DeepSpeed: accelerate's backward also steps the
        # engine, so nothing after it can undo the step; the loss is checked (one all-reduce) before.
        """
        if self.engine.deepspeed:
            finite = self.acc.reduce(torch.isfinite(loss.detach()).float().reshape(1), reduction="sum")
            if int(finite.item()) != self.acc.num_processes:
                return False
            self.acc.backward(loss)
            if self.cfg.train.grad_clip > 0 and self.acc.sync_gradients:
                self.acc.clip_grad_norm_(self.params, self.cfg.train.grad_clip)
            return True
        self.acc.backward(poison_nonfinite(loss))
        # max_norm inf: no clipping (the coefficient clamps to 1), only the norm for the decision
        norm = self.acc.clip_grad_norm_(self.params, self.cfg.train.grad_clip or float("inf"))
        return grad_norm_finite(norm)

    def skip_nonfinite(self, terms: dict) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.state.nonfinite_total += 1
        self.state.nonfinite_streak += 1
        log.warning("[%s] non-finite loss or gradient at step %d (%s): step skipped", self.spec.prefix,
                    self.state.global_step, fetch_terms(terms))
        if self.state.nonfinite_streak >= self.cfg.train.max_nonfinite_steps:
            raise LpasrnError(
                f"{self.spec.prefix}: {self.state.nonfinite_streak} non-finite losses in a row; stopping. "
                f"The last complete checkpoint in {self.stage_dir / 'checkpoints'} is intact; lower the lr "
                f"(stages.{self.spec.name}.lr) or check the data.")

    def log_terms(self, terms: dict) -> None:
        terms = fetch_terms(terms)  # the one device-to-host transfer of the loss terms
        values = {f"{self.spec.prefix}/train_{k}": v for k, v in terms.items()}
        main = terms.get({"train_l1": "l1", "train_lcofl": "lcofl"}.get(self.spec.train_tag, "loss"), terms["loss"])
        values[f"{self.spec.prefix}/{self.spec.train_tag}"] = main
        if "embedding" in terms:
            values[f"{self.spec.prefix}/embedding_loss"] = terms["embedding"]
        values[f"{self.spec.prefix}/nonfinite_skipped"] = float(self.state.nonfinite_total)
        values[f"{self.spec.prefix}/lr"] = self.lr
        self.acc.log(values, step=self.state.global_step)

    def report_read_errors(self) -> None:
        """Corrupt samples were skipped as they were met (each logged with shard and key); the stage
        ends by counting them, so none goes unnoticed."""
        for kind, errors in (("training", self.train_batches.read_errors), ("validation", self.val_read_errors)):
            if errors is not None and errors.count:
                shown = "; ".join(errors.items[:10]) + (" ..." if errors.count > 10 else "")
                print(f"[{self.spec.prefix}] rank {self.acc.process_index}: {errors.count} corrupt {kind} "
                      f"sample(s) skipped: {shown}", flush=True)
                tag = "corrupt_samples" if kind == "training" else "corrupt_val_samples"
                self.acc.log({f"{self.spec.prefix}/{tag}": float(errors.count)}, step=self.state.global_step)

    def check_preemption(self) -> None:
        """# NOTE: call on all ranks at the same step: check_trigger is an all-reduce."""
        if preemption_requested(self.preempt_file):  # the mark file, or SIGTERM/SIGUSR1 to this rank
            self.acc.set_trigger()
        if self.acc.check_trigger():
            path = self.save(mid_epoch=True)
            # the request is served: a resume must not stop again
            clear_preemption_request(self.preempt_file, remove_mark=self.acc.is_main_process)
            self.acc.print(f"[{self.spec.prefix}] preemption requested: saved {path}, exiting for requeue")
            finish_stage_trackers(self.acc)
            raise Preempted(str(path))

    def end_epoch(self, epoch: int) -> None:
        """# NOTE: call on all ranks: statistics sync, validation sums, export and save are collective."""
        self.stats.sync()
        if self.stage_cfg.update_confusion:
            self.objective.class_weights = self.stats.class_weights()
        self.train_batches.after_epoch(epoch)
        metrics = validate(self, self.lockstep_batches("val"))
        self.state.epoch = epoch + 1
        self.acc.log({f"{self.spec.prefix}/{k}": v for k, v in metrics.items()}, step=self.state.global_step)
        self.stats.log(self.state.global_step)
        master = fp32_master_state_dict(self.acc, self.model, self.frozen_fp32)  # NOTE: collective (DeepSpeed)
        if self.cfg.train.write_fingerprints:
            self.write_fingerprint(epoch, master)
        improved = self.maybe_export_best(metrics, master)
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        self.acc.print(f"[{self.spec.prefix}] epoch {self.state.epoch}/{self.stage_cfg.epochs}: {shown}"
                       + (f"  (best {self.spec.best_metric})" if improved else ""))
        last = self.state.epoch == self.stage_cfg.epochs
        if last or self.state.epoch % self.cfg.train.checkpoint_every_epochs == 0:
            self.save(mid_epoch=False)

    def write_fingerprint(self, epoch: int, master: dict[str, torch.Tensor]) -> None:
        """What this rank holds after the epoch (`fingerprints/epoch-E.rank-R.json`): hashes of the
        synced statistics, of the model's buffers (BatchNorm statistics) and of the fp32 weights it
        would export, with the engine's real compute dtype, so tests can compare ranks and engines."""
        state, tensors = self.state_dict()
        hashes = {name: state_hash(value) for name, value in sorted(tensors.items())}
        net = self.acc.unwrap_model(self.model)
        buffers = {name: buf for name, buf in net.named_buffers() if buf.is_floating_point()}
        hashes["buffers"] = state_hash({k: v.float().cpu() for k, v in buffers.items()})
        hashes["master_weights"] = state_hash(master)
        out = self.stage_dir / "fingerprints" / f"epoch-{epoch + 1:04d}.rank-{self.acc.process_index}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"distributed_type": str(self.acc.distributed_type),
                                   "num_processes": self.acc.num_processes, "compute": self.engine.summary,
                                   "param_dtype": str(self.engine.param_dtype),
                                   "input_dtype": str(self.engine.input_dtype), "hashes": hashes}, indent=1))

    def maybe_export_best(self, metrics: dict, state_dict: dict[str, torch.Tensor]) -> bool:
        """Export `state_dict` (the fp32 master weights) when the stage's metric improved."""
        value = metrics[self.spec.best_metric]
        best = self.state.best_value
        better = best is None or (value < best if self.spec.best_mode == "min" else value > best)
        if better:
            self.state.best_value, self.state.best_epoch = value, self.state.epoch
            if self.acc.is_main_process:
                record = {"epoch": self.state.epoch, "metric": self.spec.best_metric, **metrics}
                # the confusion counts go with the weights: the next stage's class weights start there
                extras = ({ckpt.CONFUSION_FILE: {"counts": self.stats.confusion.counts}}
                          if self.stage_cfg.update_confusion else None)
                ckpt.export_weights(state_dict, self.stage_dir / "best", self.config_text, record, extras)
        self.acc.wait_for_everyone()
        return better

    def log_grid(self) -> None:
        """# NOTE: call on all ranks: every rank runs the grid's forward (a collective under ZeRO-3),
        the main process draws and logs it."""
        if not self.grid_samples:
            return
        net = self.acc.unwrap_model(self.model)
        was_training = net.training
        net.eval()
        batch = self.to_device(self.grid_samples)
        with torch.no_grad():
            if self.spec.uses_generator:
                out = self.forward(net, batch, ("sr", "ocr_sr"))
                sr, logits = out["sr"], out["ocr_sr"]
            else:
                out = self.forward(net, batch, ("ocr_hr",))
                sr, logits = torch.nn.functional.interpolate(batch["lr"], scale_factor=2, mode="bicubic"), out["ocr_hr"]
        net.train(was_training)
        if self.acc.is_main_process:
            readings, _ = greedy_decode(logits.float())
            grid = plate_grid(batch["lr"], sr.float(), batch["hr"], batch["text"], readings)
            log_plate_grid(self.acc, f"{self.spec.prefix}/val_plates", grid, self.state.global_step)

    # ---- batches and forwards ----------------------------------------------------------------
    def to_device(self, batch: dict) -> dict:
        return {k: v.to(self.acc.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def forward(self, net, batch: dict, outputs: tuple[str, ...]) -> dict:
        """# NOTE: a collective under ZeRO-3: all ranks, the same number of times."""
        return model_forward(self.acc, self.engine, net, batch, outputs)

    def lockstep_batches(self, split: str):
        """This rank's even, padded share of `split` (validation: the first data.val_limit plates)."""
        if split not in self._datasets:
            self._datasets[split] = IndexedPlateDataset(self.cfg.data.dir, split)
        limit = self.cfg.data.val_limit if split == "val" else 0
        return lockstep_loader(self._datasets[split], self.cfg.data.batch_size, self.acc.process_index,
                               self.acc.num_processes, self.cfg.data.num_workers, limit)

