"""From a config and a stage argument to trained exports: the Accelerator, the default data, the
stage sequence with best-weights hand-off, and the final LR | SR | HR table.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
import yaml

from lpasrn.config import Config, save_config
from lpasrn.data.prepare import ensure_dataset
from lpasrn.data.shards import load_manifest
from lpasrn.errors import LpasrnError
from lpasrn.models.lpasrn_arch import LPASRN, build_model
from lpasrn.train import checkpoint as ckpt
from lpasrn.train.engine import resolve_mixed_precision
from lpasrn.train.loop import StageRunner
from lpasrn.train.schedule import param_groups
from lpasrn.train.stages import STAGES, StageSpec, stage_trainable_parts

log = logging.getLogger(__name__)
DONE_MARKER = "DONE"


def process_group_handlers() -> list:
    """On CPU a multi-process launch (DDP or DeepSpeed) must use gloo; a single process must not ask
    for any backend, or Accelerate expects a process group that was never started."""
    from accelerate import InitProcessGroupKwargs

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return [InitProcessGroupKwargs(backend="gloo")] if launched and not torch.cuda.is_available() else []


def make_accelerator(cfg: Config):
    from accelerate import Accelerator, DistributedDataParallelKwargs

    mixed, why = resolve_mixed_precision(cfg.train.mixed_precision)
    # NOTE: DDP's buffer broadcast is off: BufferAverager (engine.py) keeps BatchNorm statistics
    # identical on all ranks under every engine, DeepSpeed included, which broadcasts nothing.
    handlers = process_group_handlers() + [DistributedDataParallelKwargs(broadcast_buffers=False)]
    accelerator = Accelerator(mixed_precision=mixed, kwargs_handlers=handlers, project_dir=cfg.run_dir)
    accelerator.print(f"lpasrn: mixed precision {mixed!r} from {why}")
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        ds = plugin.deepspeed_config
        # We do not hand dataloaders to prepare (streamed loaders), so DeepSpeed's "auto" batch
        # size must be filled in here, once, from the config.
        ds["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
        ds.setdefault("gradient_accumulation_steps", 1)
        # DeepSpeed clips inside its own step (accelerator.clip_grad_norm_ does nothing there).
        if ds.get("gradient_clipping", "auto") == "auto":
            ds["gradient_clipping"] = cfg.train.grad_clip
        threshold = cfg.train.zero3_param_persistence_threshold
        if threshold is not None and ds.get("zero_optimization", {}).get("stage") == 3:
            ds["zero_optimization"]["stage3_param_persistence_threshold"] = threshold
    return accelerator


def build_lpasrn(cfg: Config) -> LPASRN:
    m = cfg.model
    overrides = {"use_dcnv4": m.use_dcnv4, "use_character_attention": m.use_character_attention,
                 "msca_scales": tuple(m.msca_scales), "clamp_output": m.clamp_sr}
    if m.num_channels is not None:
        overrides["num_channels"] = m.num_channels
    if m.num_blocks is not None:
        overrides["num_blocks"] = m.num_blocks
    return build_model(m.generator_preset, m.ocr_preset, cfg.loss.embedding_dim, m.use_lightweight_embedder,
                       overrides, joint_forward=m.joint_ocr_forward)


def ensure_data(cfg: Config, accelerator) -> None:
    """With data.synthesize_if_missing, render the default synthetic dataset when `data.dir` has
    none (main process; the others wait on the file system, not at a collective, see
    data/prepare.py); otherwise a missing dataset is a clear error.

    # NOTE: call on all ranks (wait_for_everyone, reached once the dataset exists).
    """
    ensure_dataset(cfg.data, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    load_manifest(cfg.data.dir)  # the same clear error on every rank if there is still no dataset


def stage_dir(cfg: Config, spec: StageSpec) -> Path:
    return Path(cfg.run_dir) / spec.prefix


def previous_export(cfg: Config, spec: StageSpec) -> Path | None:
    """The best export of the stage before `spec` (None for stage 0), or a clear error."""
    if spec.index == 0:
        return None
    before = STAGES[spec.index - 1]
    weights = stage_dir(cfg, before) / "best" / ckpt.EXPORT_WEIGHTS
    if not weights.is_file():
        raise LpasrnError(f"stage {spec.index} starts from stage {before.index}'s best weights, but {weights} "
                          f"does not exist: run `--stage {before.index}` first (or `--stage all`)")
    return weights


def _finished_epochs(sdir: Path) -> int:
    """Epochs a finished stage ran (0 if it did not finish); more epochs in the config = continue."""
    try:
        return int(json.loads((sdir / DONE_MARKER).read_text())["epochs"])
    except (OSError, ValueError, KeyError):
        return 0


def run_stage(spec: StageSpec, cfg: Config, accelerator, init_weights: Path | None, resume: str | None,
              config_text: str, preempt_file: Path | None) -> Path:
    """Train one stage; returns its best export directory. # NOTE: call on all ranks."""
    sdir = stage_dir(cfg, spec)
    stage_cfg = getattr(cfg.stages, spec.name)
    if resume == "auto" and _finished_epochs(sdir) >= stage_cfg.epochs:
        accelerator.print(f"[{spec.prefix}] already finished: using {sdir / 'best'}")
        return sdir / "best"
    resume_path = ckpt.resolve_resume(resume, sdir / "checkpoints")
    if resume_path is None and (sdir / "checkpoints").is_dir() and ckpt.list_complete(sdir / "checkpoints"):
        raise LpasrnError(f"{sdir} already holds checkpoints: pass --resume auto to continue, or use a new run_dir")
    torch.manual_seed(cfg.seed + spec.index)
    model = build_lpasrn(cfg)
    if init_weights is not None:
        model.load_state_dict(ckpt.check_weights_match(model, init_weights))
    model.set_trainable(stage_trainable_parts(cfg, spec))
    # fp32 originals, taken before DeepSpeed may cast the parameters to 16 bits: exports read the
    # frozen parts from here (they never change); trainable ones come from the fp32 masters.
    frozen_fp32 = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    # fused: one kernel for all parameters instead of several small ops per tensor (CPU and CUDA)
    optimizer = torch.optim.AdamW(param_groups(model, stage_cfg), lr=stage_cfg.lr,
                                  weight_decay=cfg.train.weight_decay, fused=True)
    model, optimizer = accelerator.prepare(model, optimizer)
    runner = StageRunner(spec, cfg, accelerator, model, optimizer, sdir, config_text, preempt_file, frozen_fp32,
                         init_weights.parent if init_weights is not None else None)
    if resume_path is not None:
        runner.resume_from(resume_path)
    try:
        export = runner.run()
    finally:
        accelerator.free_memory()
    if accelerator.is_main_process:
        (sdir / DONE_MARKER).write_text(json.dumps({"epochs": runner.state.epoch, "best": runner.state.best_value,
                                                    "best_epoch": runner.state.best_epoch}) + "\n")
    accelerator.wait_for_everyone()
    return export


def run_stages(cfg: Config, specs: list[StageSpec], resume: str | None, accelerator) -> Path:
    """# NOTE: call on all ranks. Returns the last stage's best export directory."""
    ensure_data(cfg, accelerator)
    run_dir = Path(cfg.run_dir)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    accelerator.wait_for_everyone()
    config_text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    preempt = os.environ.get("LPASRN_PREEMPT_FILE")
    preempt_file = Path(preempt) if preempt else run_dir / "PREEMPT"
    init = previous_export(cfg, specs[0])
    export = None
    for spec in specs:
        export = run_stage(spec, cfg, accelerator, init, resume, config_text, preempt_file)
        init = export / ckpt.EXPORT_WEIGHTS
    return export
