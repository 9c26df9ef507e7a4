"""Load a trained model from an export directory (`runs/<exp>/stageK_<name>/best/`).

An export holds `model.safetensors` (plain fp32 weights), `config.yaml` (the resolved training
config) and `metrics.json`. Only safetensors and YAML (safe_load) are read: nothing is unpickled.
"""
from __future__ import annotations

from pathlib import Path

import torch
import yaml

from lpasrn.config import Config, config_from_dict
from lpasrn.errors import LpasrnError
from lpasrn.models.dcn import DeformConv2d
from lpasrn.models.lpasrn_arch import LPASRN
from lpasrn.train.checkpoint import EXPORT_WEIGHTS, check_weights_match, describe_mismatch

CONFIG_NAME = "config.yaml"


def read_export_config(export_dir: Path) -> Config:
    """The validated config saved beside the weights, or one clear error naming the file."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise LpasrnError(f"--checkpoint {export_dir}: no such export directory (expected "
                          f"runs/<exp>/stageK_<name>/best/ with {EXPORT_WEIGHTS} and {CONFIG_NAME})")
    path = export_dir / CONFIG_NAME
    if not path.is_file():
        raise LpasrnError(f"{path}: missing; an export directory holds {EXPORT_WEIGHTS} and {CONFIG_NAME}")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise LpasrnError(f"{path}: not a readable YAML config ({err})") from None
    if not isinstance(raw, dict):
        raise LpasrnError(f"{path}: the top level must be a mapping of config keys")
    return config_from_dict(raw, source=str(path))


def load_exported_model(export_dir: Path, device: str | torch.device = "cpu",
                        pure_pytorch_dcn: bool = False) -> tuple[LPASRN, Config]:
    """The LPASRN of an export in eval mode on `device`, and its config.

    pure_pytorch_dcn=True pins every deformable conv to the pure-PyTorch (grid_sample) path, the one that
    ONNX and TorchScript can trace; the weights are the same either way.
    """
    from lpasrn.train.pipeline import build_lpasrn  # pipeline imports the whole trainer: keep it lazy

    export_dir = Path(export_dir)
    cfg = read_export_config(export_dir)
    model = build_lpasrn(cfg)
    model.load_state_dict(check_weights_match(model, export_dir / EXPORT_WEIGHTS))
    if pure_pytorch_dcn:
        for module in model.modules():
            if isinstance(module, DeformConv2d):
                module.use_dcnv4 = False
    model.requires_grad_(False)
    return model.to(device).eval(), cfg


def load_exported_ocr(export_dir: Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The OCR (`ocr.*` weights) of an export, in eval mode on `device`, built from that export's own
    config, so it may have another OCR preset than the export whose generator it reads.

    An export whose weights hold no `ocr.*` tensors is one clear error naming the file.
    """
    from lpasrn.train.checkpoint import read_weights
    from lpasrn.train.pipeline import build_lpasrn  # pipeline imports the whole trainer: keep it lazy

    export_dir = Path(export_dir)
    cfg = read_export_config(export_dir)
    weights_file = export_dir / EXPORT_WEIGHTS
    found = read_weights(weights_file, f"--ocr {export_dir}: OCR weights")
    ocr_weights = {k[len("ocr."):]: v for k, v in found.items() if k.startswith("ocr.")}
    if not ocr_weights:
        raise LpasrnError(f"{weights_file}: holds no OCR weights (no 'ocr.*' tensors), so it cannot read "
                          "plates; pass an export of a stage that trains or carries the OCR")
    ocr = build_lpasrn(cfg).ocr
    mismatch = describe_mismatch(ocr.state_dict(), ocr_weights)
    if mismatch:
        raise LpasrnError(f"{weights_file}: its OCR weights do not fit the OCR preset "
                          f"{cfg.model.ocr_preset!r} of {export_dir / CONFIG_NAME}: {mismatch}")
    ocr.load_state_dict(ocr_weights)
    ocr.requires_grad_(False)
    return ocr.to(device).eval()
