"""Atomic checkpoints and fp32 exports.

A checkpoint is written into a hidden temporary directory, renamed into place, and only then marked
complete (`COMPLETE` file). A save killed at any point leaves the previous complete checkpoint as
the newest usable one. Trainer state (epoch, step, best metric, confusion, miner) is saved as JSON
plus safetensors, never pickled, so loading a checkpoint unpickles nothing of ours.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lpasrn.errors import LpasrnError

log = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
TRAINER_JSON = "trainer_state.json"
TRAINER_TENSORS = "trainer_state.safetensors"
EXPORT_WEIGHTS = "model.safetensors"
_NAME_RE = re.compile(r"^epoch-(\d+)(?:-step-(\d+))?$")


def checkpoint_name(epoch: int, step_in_epoch: int | None = None) -> str:
    """`epoch-0003` = after 3 finished epochs; `epoch-0003-step-000120` = 120 steps into epoch 4."""
    return f"epoch-{epoch:04d}" if step_in_epoch is None else f"epoch-{epoch:04d}-step-{step_in_epoch:06d}"


def _order_key(path: Path) -> tuple[int, int]:
    """(finished epochs, steps into the next epoch): `epoch-0001-step-000005` is newer than `epoch-0001`."""
    match = _NAME_RE.match(path.name)
    return int(match.group(1)), int(match.group(2) or 0)


def _write_trainer_state(path: Path, state: dict, tensors: dict[str, torch.Tensor]) -> None:
    (path / TRAINER_JSON).write_text(json.dumps(state, indent=1, sort_keys=True))
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path / TRAINER_TENSORS))


def save_checkpoint(accelerator, checkpoints_dir: Path, name: str, state: dict,
                    tensors: dict[str, torch.Tensor], keep: int, config_text: str) -> Path:
    """Save model, optimizer, RNG and trainer state atomically; keep the newest `keep` checkpoints.

    # NOTE: call on all ranks: save_state is collective under DeepSpeed and every rank writes its
    # own RNG state; only the main process renames and marks the directory complete.
    """
    final = checkpoints_dir / name
    tmp = checkpoints_dir / f".tmp-{name}"
    if accelerator.is_main_process:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_trainer_state(tmp, state, tensors)
        (tmp / "config.yaml").write_text(config_text)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        (final / COMPLETE_MARKER).write_text(name + "\n")
        _prune(checkpoints_dir, keep)
    accelerator.wait_for_everyone()
    return final


def _prune(checkpoints_dir: Path, keep: int) -> None:
    complete = list_complete(checkpoints_dir)
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def list_complete(checkpoints_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first; incomplete ones are reported and passed over."""
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for path in checkpoints_dir.iterdir():
        if not path.is_dir() or not _NAME_RE.match(path.name):
            continue
        if (path / COMPLETE_MARKER).is_file() and (path / TRAINER_JSON).is_file():
            found.append(path)
        else:
            log.warning("ignoring incomplete checkpoint %s (no %s marker)", path, COMPLETE_MARKER)
    return sorted(found, key=_order_key)


def resolve_resume(resume: str | None, checkpoints_dir: Path) -> Path | None:
    """`auto` -> newest complete checkpoint or None; a path -> that checkpoint, refused if incomplete."""
    if not resume:
        return None
    if resume == "auto":
        complete = list_complete(checkpoints_dir)
        return complete[-1] if complete else None
    path = Path(resume)
    if not path.is_dir():
        raise LpasrnError(f"--resume {path}: no such checkpoint directory")
    if not (path / COMPLETE_MARKER).is_file() or not (path / TRAINER_JSON).is_file():
        raise LpasrnError(f"--resume {path}: checkpoint is incomplete or corrupt (no {COMPLETE_MARKER} marker); "
                          "use --resume auto to take the newest complete one")
    return path


def read_trainer_state(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    try:
        state = json.loads((path / TRAINER_JSON).read_text())
        tensors = load_file(str(path / TRAINER_TENSORS)) if (path / TRAINER_TENSORS).is_file() else {}
    except (OSError, ValueError) as err:
        raise LpasrnError(f"checkpoint {path}: cannot read trainer state: {err}") from None
    return state, tensors


def describe_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], limit: int = 8) -> str:
    """Which keys differ between two state dicts (missing, unexpected, other shape); '' if none."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(k for k in set(expected) & set(found) if tuple(expected[k].shape) != tuple(found[k].shape))
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("different shape", shapes)):
        if keys:
            more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
            parts.append(f"{label}: {', '.join(keys[:limit])}{more}")
    return "; ".join(parts)


def read_weights(path: Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, or one clear error naming it (missing, truncated, not
    safetensors). `what` names the file's role in the missing-file message."""
    path = Path(path)
    if not path.is_file():
        raise LpasrnError(f"{what} not found: {path}")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for truncated files
        raise LpasrnError(f"{path}: not a readable safetensors file ({err})") from None


def check_weights_match(model: torch.nn.Module, weights_file: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file and make sure it fits `model`, naming the keys that differ if not."""
    found = read_weights(weights_file)
    mismatch = describe_mismatch(model.state_dict(), found)
    if mismatch:
        raise LpasrnError(f"{weights_file} was saved from a different model preset or configuration: {mismatch}")
    return found


CONFUSION_FILE = "confusion.safetensors"  # beside an export: the confusion counts a next stage carries


def export_weights(state_dict: dict[str, torch.Tensor], export_dir: Path, config_text: str, metrics: dict,
                   extras: dict[str, dict[str, torch.Tensor]] | None = None) -> None:
    """Write plain fp32 safetensors + config + metrics (+ `extras`: file name -> tensors, e.g. the
    confusion counts), atomically (never a half-written export)."""
    tmp = export_dir.parent / f".tmp-{export_dir.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
               for k, v in state_dict.items()}
    save_file(weights, str(tmp / EXPORT_WEIGHTS))
    (tmp / "config.yaml").write_text(config_text)
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    for name, tensors in (extras or {}).items():
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / name))
    old = export_dir.parent / f".old-{export_dir.name}"
    shutil.rmtree(old, ignore_errors=True)
    if export_dir.exists():
        os.replace(export_dir, old)
    os.replace(tmp, export_dir)
    shutil.rmtree(old, ignore_errors=True)


def check_world_size(path: Path, saved: dict, world_size: int, deepspeed: bool) -> None:
    """A mid-epoch checkpoint only resumes on the number of processes that wrote it: the position in
    the epoch is a per-rank batch count. At an epoch boundary DDP state is whole and may change size;
    DeepSpeed's optimizer state is partitioned by rank, so it may not (whichever engine resumes it)."""
    saved_size = int(saved.get("world_size", world_size))
    if saved_size == world_size:
        return
    mid_epoch = saved["loop"].get("step_in_epoch", 0) > 0
    deepspeed = deepspeed or bool(saved.get("deepspeed", False))
    if mid_epoch or deepspeed:
        where = "mid-epoch" if mid_epoch else "under DeepSpeed (optimizer state is split by rank)"
        raise LpasrnError(
            f"checkpoint {path} was saved {where} by {saved_size} processes; this run has {world_size}. "
            f"Resume it with {saved_size} processes, or resume from an end-of-epoch checkpoint of a "
            f"DDP/single-process run (--resume PATH), or start the next stage from this stage's export "
            f"({path.parent.parent / 'best'}), which any number of processes can load.")
