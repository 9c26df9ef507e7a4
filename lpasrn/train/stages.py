"""The five progressive stages, each a small declaration over the one shared loop (loop.py).

A stage says what trains, which losses (from its config's `loss_components`), how batches are
sampled, and which validation metric picks its best weights. Everything else is shared.
"""
from __future__ import annotations

from dataclasses import dataclass

from lpasrn.config import stage_loss
from lpasrn.errors import LpasrnError


@dataclass(frozen=True)
class StageSpec:
    index: int
    name: str                 # key under `stages:` in the config
    trains: frozenset         # parts of LPASRN that get gradients (OCR also when freeze_ocr is false)
    uses_generator: bool      # stage 0 trains the OCR on HR only
    best_metric: str          # validation metric that picks `best`
    best_mode: str            # "min" or "max"
    train_tag: str            # the tag of the stage's main training loss
    sampler: str = "stream"   # "stream" (exact-once shards) or "weighted" (hard mining)

    @property
    def prefix(self) -> str:
        """TensorBoard/W&B tag prefix, e.g. 'stage2_lcofl' (DESIGN.md section 5)."""
        return f"stage{self.index}_{self.name}"


STAGES = (
    StageSpec(0, "pretrain", frozenset({"ocr"}), False, "val_loss", "min", "train_loss"),
    StageSpec(1, "warmup", frozenset({"generator"}), True, "val_loss", "min", "train_l1"),
    StageSpec(2, "lcofl", frozenset({"generator"}), True, "val_recognition_rate", "max", "train_lcofl"),
    StageSpec(3, "finetune", frozenset({"generator", "ocr"}), True, "val_word_acc", "max", "train_loss"),
    StageSpec(4, "hard_mining", frozenset({"generator", "embedder"}), True, "val_word_acc", "max",
              "train_loss", sampler="weighted"),
)


def stage_by_index(index: int) -> StageSpec:
    if not 0 <= index < len(STAGES):
        raise LpasrnError(f"stage {index} is out of range: stages are 0..{len(STAGES) - 1} or 'all'")
    return STAGES[index]


def parse_stage_arg(text: str) -> list[StageSpec]:
    """'all' -> every stage in order; 'N' -> that stage; anything else is a clear error."""
    if text == "all":
        return list(STAGES)
    try:
        index = int(text)
    except ValueError:
        raise LpasrnError(f"--stage {text!r}: expected 0..{len(STAGES) - 1} or 'all'") from None
    return [stage_by_index(index)]


def embedding_loss_on(loss_components, loss_cfg) -> bool:
    """Whether a stage computes an embedding loss: the component is listed and its weight (the
    stage's, see config.stage_loss) is above 0. The one place this is decided: it freezes the
    embedder (trainable_parts) and so decides whether the embedder runs (StageObjective)."""
    return "embedding" in loss_components and loss_cfg.lambda_embed > 0


def stage_trainable_parts(cfg, spec: StageSpec) -> set[str]:
    """trainable_parts of `spec` as `cfg` configures it (freeze_ocr, the stage's embedding weight)."""
    stage_cfg = getattr(cfg.stages, spec.name)
    return trainable_parts(spec, stage_cfg.freeze_ocr,
                           embedding_loss_on(stage_cfg.loss_components, stage_loss(cfg, spec.name)))


def trainable_parts(spec: StageSpec, freeze_ocr: bool, embedding_on: bool = True) -> set[str]:
    """Parts that train in this stage: the declaration, with the OCR added or removed by freeze_ocr
    and the embedder removed when the stage computes no embedding loss (`embedding_on` False: not
    among its loss components, or lambda_embed 0). An embedder that trains but never runs would
    leave DDP (no find_unused_parameters) waiting for gradients that never come."""
    parts = set(spec.trains)
    if not embedding_on:
        parts.discard("embedder")
    if spec.index == 0:
        return {"ocr"}  # stage 0 exists to train the OCR; freeze_ocr does not apply
    if freeze_ocr:
        parts.discard("ocr")
    else:
        parts.add("ocr")
    return parts
