"""Typed configuration: YAML into validated dataclasses.

An unknown or misspelt key, a wrong type or an out-of-range value is an LpasrnError naming the key
and the file (with the nearest known key as a suggestion). `--set a.b=value` overrides are applied
to the raw YAML before validation, so they go through exactly the same checks.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lpasrn.errors import LpasrnError


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, so `wandb: off` or `--set x=no` stay strings."""


_Yaml12Loader.yaml_implicit_resolvers = {
    key: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                    list("tTfF"))


def _load_yaml(text: str):
    return yaml.load(text, Loader=_Yaml12Loader)


def _range(lo=None, hi=None, choices=None):
    """Field metadata read by the validator: inclusive bounds or allowed values."""
    return {"lo": lo, "hi": hi, "choices": choices}


LOSS_COMPONENTS = ("ctc", "l1", "lcofl", "ctc_hr", "ctc_sr", "embedding")


@dataclass
class AugmentConfig:
    """Seeded training augmentation (lpasrn/data/augment.py); validation/evaluation never augment.
    Off by default so existing runs keep their exact numbers; the shipped configs switch it on."""
    enabled: bool = False
    geometric: bool = True      # one small affine per sample, identical on LR and HR (pair stays aligned)
    photometric: bool = True    # pointwise colour jitter, the same parameters on LR and HR
    max_rotation_deg: float = field(default=3.0, metadata=_range(0.0, 30.0))
    max_shear_deg: float = field(default=2.0, metadata=_range(0.0, 30.0))
    max_scale: float = field(default=0.05, metadata=_range(0.0, 0.5))        # zoom 1 +- max_scale
    max_translate: float = field(default=0.03, metadata=_range(0.0, 0.5))    # fraction of width/height
    brightness: float = field(default=0.1, metadata=_range(0.0, 1.0))        # additive +- on [0, 1]
    contrast: float = field(default=0.2, metadata=_range(0.0, 1.0))          # factor 1 +- contrast
    gamma: float = field(default=0.2, metadata=_range(0.0, 2.0))             # exponent in [1/(1+g), 1+g]
    saturation: float = field(default=0.2, metadata=_range(0.0, 1.0))        # factor 1 +- saturation
    channel_gain: float = field(default=0.05, metadata=_range(0.0, 0.5))     # per-channel 1 +- gain (colour cast)
    # Strength of the stage-0 OCR's degraded views (stages.pretrain.ocr_degraded_views is how often).
    degrade_max_blur: float = field(default=1.5, metadata=_range(0.0, 5.0))  # Gaussian sigma, HR pixels
    degrade_max_downscale: float = field(default=2.5, metadata=_range(1.0, 4.0))
    degrade_max_noise: float = field(default=0.03, metadata=_range(0.0, 0.5))  # noise std on [0, 1]


@dataclass
class DataConfig:
    dir: str = "shards/synthetic"
    batch_size: int = field(default=32, metadata=_range(1))
    num_workers: int = field(default=2, metadata=_range(0))
    # With synthesize_if_missing, a `dir` without a dataset gets the built-in synthetic plates.
    synthesize_if_missing: bool = False
    synth_shard_size: int = field(default=250, metadata=_range(1))
    synth_train: int = field(default=4000, metadata=_range(1))
    synth_val: int = field(default=400, metadata=_range(1))
    synth_test: int = field(default=400, metadata=_range(1))
    synth_seed: int = 0
    synth_degradation: str = field(default="paper", metadata=_range(choices=("paper", "realistic")))
    val_limit: int = field(default=0, metadata=_range(0))  # 0 = whole validation split
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ModelConfig:
    generator_preset: str = field(default="paper", metadata=_range(choices=("paper", "small", "tiny")))
    ocr_preset: str = field(default="paper", metadata=_range(choices=("paper", "small", "tiny")))
    num_channels: int | None = None  # overrides of the generator preset
    num_blocks: int | None = None
    use_dcnv4: bool = True
    use_character_attention: bool = True
    msca_scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25])
    use_lightweight_embedder: bool = False
    # SR clamped to [0, 1] inside the generator: validation, the losses and evaluation all see the
    # image that is reported (an unclamped output was read by validation but clamped in evaluation).
    clamp_sr: bool = True
    # One OCR (and embedder) forward over SR and HR concatenated when both are read: BatchNorm then
    # normalises one batch of both, as the evaluated model was trained, not two separate ones.
    joint_ocr_forward: bool = True


@dataclass
class LossConfig:
    lambda_l1: float = field(default=1.0, metadata=_range(0.0))
    lambda_cls: float = field(default=1.0, metadata=_range(0.0))
    lambda_layout: float = field(default=1.0, metadata=_range(0.0))
    lambda_ssim: float = field(default=1.0, metadata=_range(0.0))
    lambda_lcofl: float = field(default=1.0, metadata=_range(0.0))
    lambda_ctc_hr: float = field(default=1.0, metadata=_range(0.0))
    # CTC of the OCR on SR as a generator term: LCOFL's per-character CE reads each character at its
    # best frame, so it never penalises insertions; the full CTC does.
    lambda_ctc_sr: float = field(default=1.0, metadata=_range(0.0))
    # LCOFL constants (official: sum per plate, (1 - SSIM) / 2; see losses/lcofl.py)
    layout_reduction: str = field(default="plate_sum", metadata=_range(choices=("plate_sum", "position_mean")))
    ssim_loss_scale: float = field(default=0.5, metadata=_range(0.0))
    ssim_window: int = field(default=5, metadata=_range(3))
    digit_on_letter: float = field(default=0.4, metadata=_range(0.0))
    letter_on_digit: float = field(default=0.5, metadata=_range(0.0))
    confusion_threshold: float = field(default=0.25, metadata=_range(0.0, 1.0))
    class_weight_step: float = field(default=0.5, metadata=_range(0.0))
    lambda_embed: float = field(default=0.3, metadata=_range(0.0))
    embed_warmup_epochs: int = field(default=5, metadata=_range(0))
    embedding_dim: int = field(default=128, metadata=_range(1))
    # Hinge margin between different plates' embeddings. The embedder L2-normalises, so distances
    # are at most 2: a margin must be in (0, 2) to be reachable (checked below); 1.0 asks different
    # plates to be at least 60 degrees apart (random unit vectors are ~1.41 apart).
    embed_margin: float = 1.0


@dataclass
class HardMiningConfig:
    difficulty_alpha: float = field(default=2.0, metadata=_range(0.0))
    reweight_interval: int = field(default=5, metadata=_range(1))  # epochs between re-weightings (spec: 5)
    # Curriculum position of the stage's first and last draws (HardExampleMiner.sampling_weights:
    # 0 favours easy plates, 0.5 is uniform, 1 favours hard ones); see sampler.curriculum_progress.
    curriculum_start: float = field(default=0.5, metadata=_range(0.0, 1.0))
    curriculum_end: float = field(default=1.0, metadata=_range(0.0, 1.0))
    ema_momentum: float = field(default=0.9, metadata=_range(0.0, 1.0))
    score_before_stage: bool = True


@dataclass
class StageLossWeights:
    """Per-stage values of the `loss.lambda_*` weights; unset (null) keeps the global one. A stage
    where the OCR trains may want its CTC on SR at full weight, while in a stage where only the
    generator trains the same term is a small pull next to L1 (see configs/quickstart.yaml)."""

    lambda_l1: float | None = field(default=None, metadata=_range(0.0))
    lambda_cls: float | None = field(default=None, metadata=_range(0.0))
    lambda_layout: float | None = field(default=None, metadata=_range(0.0))
    lambda_ssim: float | None = field(default=None, metadata=_range(0.0))
    lambda_lcofl: float | None = field(default=None, metadata=_range(0.0))
    lambda_ctc_hr: float | None = field(default=None, metadata=_range(0.0))
    lambda_ctc_sr: float | None = field(default=None, metadata=_range(0.0))
    lambda_embed: float | None = field(default=None, metadata=_range(0.0))


@dataclass
class StageConfig:
    epochs: int = field(default=1, metadata=_range(1))
    lr: float = field(default=1e-4, metadata=_range(0.0))
    loss_components: list[str] = field(default_factory=lambda: ["l1"])
    freeze_ocr: bool = True
    update_confusion: bool = False
    hard_mining: HardMiningConfig = field(default_factory=HardMiningConfig)
    # lr = lr x train/schedule.lr_factor(step): linear warm-up over warmup_fraction of the stage's
    # steps, then constant or a cosine down to min_lr_ratio x lr at the stage's last step.
    lr_schedule: str = field(default="cosine", metadata=_range(choices=("constant", "cosine")))
    warmup_fraction: float = field(default=0.05, metadata=_range(0.0, 1.0))
    min_lr_ratio: float = field(default=0.05, metadata=_range(0.0, 1.0))
    # Where the confusion counts (LCOFL's class weights) start when update_confusion is on: "carry"
    # the previous stage's (its export's confusion file; a scoring pass when it has none), "score"
    # with a pass over the training split before the first step, or "none" (empty: uniform weights
    # until the first epoch ends).
    confusion_start: str = field(default="carry", metadata=_range(choices=("carry", "score", "none")))
    # Probability that the OCR reads a degraded copy of a training HR (blur, down-up, noise; see
    # data.augment.degrade_*) instead of the clean one. Only for pretrain: there the OCR is the only
    # reader of HR; in other stages HR is also the generator's target.
    ocr_degraded_views: float = field(default=0.0, metadata=_range(0.0, 1.0))
    # Whether this stage's training batches get data.augment (when that is enabled). A short stage 0
    # may leave it off: a CTC OCR's first ~1,000 steps on clean HR are what lets it read at all.
    augment: bool = True
    # The OCR's own lr where it trains in this stage (null: `lr`); the schedule scales both alike.
    ocr_lr: float | None = field(default=None, metadata=_range(0.0))
    # this stage's loss weights where they differ from `loss:` (see stage_loss)
    loss_weights: StageLossWeights = field(default_factory=StageLossWeights)


def _stage(epochs, lr, components, freeze_ocr=True, update_confusion=False):
    return field(default_factory=lambda: StageConfig(epochs, lr, list(components), freeze_ocr, update_confusion))


@dataclass
class StagesConfig:
    """Paper defaults (DESIGN.md section 5); configs override per stage."""

    pretrain: StageConfig = _stage(50, 1e-3, ["ctc"], freeze_ocr=False)
    warmup: StageConfig = _stage(30, 1e-4, ["l1"])
    lcofl: StageConfig = _stage(300, 1e-4, ["l1", "lcofl"], update_confusion=True)
    finetune: StageConfig = _stage(150, 1e-5, ["l1", "lcofl", "ctc_hr"], freeze_ocr=False, update_confusion=True)
    hard_mining: StageConfig = _stage(50, 5e-6, ["l1", "lcofl", "embedding"], update_confusion=True)


@dataclass
class TrainConfig:
    grad_clip: float = field(default=1.0, metadata=_range(0.0))
    weight_decay: float = field(default=0.0, metadata=_range(0.0))
    max_nonfinite_steps: int = field(default=20, metadata=_range(1))
    log_every: int = field(default=20, metadata=_range(1))
    image_every: int = field(default=500, metadata=_range(1))
    keep_checkpoints: int = field(default=2, metadata=_range(1))
    checkpoint_every_epochs: int = field(default=1, metadata=_range(1))
    preempt_poll_every: int = field(default=10, metadata=_range(1))
    mixed_precision: str = field(default="auto", metadata=_range(choices=("auto", "no", "bf16", "fp16")))
    max_steps_per_epoch: int = field(default=0, metadata=_range(0))  # 0 = whole split
    # Each rank writes sha256 fingerprints of its synced statistics per epoch, to check that all
    # ranks hold the same confusion matrix, miner state and sampling weights.
    write_fingerprints: bool = False
    # ZeRO-3 only: parameters smaller than this stay whole on every rank (DeepSpeed's
    # stage3_param_persistence_threshold; None = the DeepSpeed JSON's value). 0 partitions every
    # parameter, as the paper preset's large ones are: tests use it so that tiny models exercise
    # the all-gather in every forward instead of hiding hangs.
    zero3_param_persistence_threshold: int | None = field(default=None, metadata=_range(0))


@dataclass
class TrackingConfig:
    tensorboard: bool = True
    wandb: str = field(default="auto", metadata=_range(choices=("auto", "online", "offline", "off")))
    wandb_project: str = "lpasrn"
    num_image_samples: int = field(default=8, metadata=_range(1))


@dataclass
class Config:
    experiment: str = "lpasrn"
    seed: int = 0
    run_dir: str = "runs/lpasrn"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def stage_loss(cfg: Config, stage_name: str) -> LossConfig:
    """The loss settings a stage trains with: `loss:` with the stage's `loss_weights` overrides."""
    overrides = dataclasses.asdict(getattr(cfg.stages, stage_name).loss_weights)
    return dataclasses.replace(cfg.loss, **{k: v for k, v in overrides.items() if v is not None})


def _fail(source: str, key: str, message: str) -> typing.NoReturn:
    raise LpasrnError(f"{source}: key '{key}': {message}")


def _check_scalar(value, hint, key: str, source: str):
    if hint is bool:
        if not isinstance(value, bool):
            _fail(source, key, f"expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(source, key, f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                _fail(source, key, f"expected a number, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(source, key, f"expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            _fail(source, key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint} for {key}")


def _convert(value, hint, key: str, source: str):
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            _fail(source, key, f"expected a mapping, got {value!r}")
        return _build(hint, value, key + ".", source)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _convert(value, args[0], key, source)
    if origin is list:
        if not isinstance(value, list):
            _fail(source, key, f"expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_convert(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    return _check_scalar(value, hint, key, source)


def _check_range(value, meta: dict, key: str, source: str) -> None:
    if value is None or not meta:
        return
    if meta.get("choices") is not None and value not in meta["choices"]:
        _fail(source, key, f"{value!r} is not one of {list(meta['choices'])}")
    if meta.get("lo") is not None and value < meta["lo"]:
        _fail(source, key, f"{value!r} is below the minimum {meta['lo']}")
    if meta.get("hi") is not None and value > meta["hi"]:
        _fail(source, key, f"{value!r} is above the maximum {meta['hi']}")


def _build(cls, raw: dict, prefix: str, source: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in raw:
        if name not in fields:
            near = difflib.get_close_matches(str(name), list(fields), n=1)
            hint = f"; did you mean '{prefix}{near[0]}'?" if near else f"; known keys: {', '.join(fields)}"
            _fail(source, prefix + str(name), "unknown key" + hint)
    kwargs = {}
    for name, f in fields.items():
        if name in raw:
            value = raw[name]
            if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict) \
                    and f.default_factory is not dataclasses.MISSING:
                # keys not given keep THIS field's default, not the class's: `stages.finetune:
                # {epochs: 5}` must keep stage 3's freeze_ocr false and its loss components
                value = _deep_merge(dataclasses.asdict(f.default_factory()), value)
            kwargs[name] = _convert(value, hints[name], prefix + name, source)
            _check_range(kwargs[name], dict(f.metadata), prefix + name, source)
    obj = cls(**kwargs)
    _check_semantics(obj, prefix, source)
    return obj


def _deep_merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        both_maps = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _deep_merge(merged[key], value) if both_maps else value
    return merged


def _check_semantics(obj, prefix: str, source: str) -> None:
    if isinstance(obj, StageConfig):
        for comp in obj.loss_components:
            if comp not in LOSS_COMPONENTS:
                near = difflib.get_close_matches(comp, LOSS_COMPONENTS, n=1)
                extra = f"; did you mean '{near[0]}'?" if near else ""
                _fail(source, prefix + "loss_components", f"unknown loss component {comp!r}{extra}")
    if isinstance(obj, LossConfig) and not 0.0 < obj.embed_margin < 2.0:
        _fail(source, prefix + "embed_margin", f"must be in (0, 2): embeddings have unit norm, so no two are "
              f"more than 2 apart and a margin of {obj.embed_margin} could never be met")
    if isinstance(obj, StagesConfig):
        for name in (f.name for f in dataclasses.fields(obj) if f.name != "pretrain"):
            if getattr(obj, name).ocr_lr is not None and getattr(obj, name).freeze_ocr:
                _fail(source, f"{prefix}{name}.ocr_lr", "the OCR is frozen in this stage (freeze_ocr: true)")
            if getattr(obj, name).ocr_degraded_views > 0:
                _fail(source, f"{prefix}{name}.ocr_degraded_views",
                      "only stages.pretrain may degrade the OCR's input (elsewhere HR is the generator's target)")
    if isinstance(obj, ModelConfig):
        if not obj.msca_scales or any(not 0 < s <= 1 for s in obj.msca_scales):
            _fail(source, prefix + "msca_scales", f"scales must be in (0, 1], got {obj.msca_scales}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b=value' -> (['a', 'b'], value parsed as YAML, so numbers, booleans and lists work)."""
    if "=" not in text:
        raise LpasrnError(f"--set {text!r}: expected KEY=VALUE, e.g. --set stages.lcofl.epochs=5")
    key, value = text.split("=", 1)
    return key.strip().split("."), _load_yaml(value)


def _apply_override(raw: dict, path: list[str], value) -> None:
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise LpasrnError(f"--set {'.'.join(path)}: '{part}' is not a section")
    node[path[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Load a YAML config (or the defaults when path is None) and apply --set overrides."""
    raw: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise LpasrnError(f"config file not found: {path}")
        try:
            raw = _load_yaml(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise LpasrnError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise LpasrnError(f"{path}: the top level must be a mapping of keys")
    for item in overrides:
        keys, value = parse_override(item)
        _apply_override(raw, keys, value)
    if overrides:
        source += " (with --set overrides)"
    return _build(Config, raw, "", source)


def config_from_dict(raw: dict, source: str = "saved config") -> Config:
    return _build(Config, raw, "", source)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
