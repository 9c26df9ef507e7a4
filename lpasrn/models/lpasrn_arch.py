"""LPASRN: generator, OCR and Siamese embedder in one nn.Module.

One module so Accelerate/DeepSpeed prepare (wrap, shard, checkpoint) a single model. Stages freeze
parts with `set_trainable` and build their optimizer from `trainable_parameters()`; call
`set_trainable` BEFORE `accelerator.prepare`, since DDP and ZeRO record which parameters need
gradients when they wrap the model.

Run the parts through `forward` (the wrapped model's __call__), not through `model.generator` etc.:
DDP only synchronises gradients of a backward pass whose forward went through the DDP wrapper.
"""
from __future__ import annotations

import torch
from torch import nn

from lpasrn.models.embedder_arch import SiameseEmbedder
from lpasrn.models.generator_arch import build_generator
from lpasrn.models.ocr_arch import SimpleCRNN

PARTS = ("generator", "ocr", "embedder")
OUTPUTS = ("sr", "ocr_sr", "ocr_hr", "emb_sr", "emb_hr")


class LPASRN(nn.Module):
    def __init__(self, generator: nn.Module, ocr: nn.Module, embedder: nn.Module, joint_forward: bool = False):
        super().__init__()
        self.generator = generator
        self.ocr = ocr
        self.embedder = embedder
        # One OCR/embedder call over SR and HR together when both are asked for: in train mode
        # BatchNorm then normalises with the statistics of the mixed batch (and updates its running
        # statistics once per step) instead of alternating between an SR-only and an HR-only batch.
        self.joint_forward = joint_forward

    def set_trainable(self, parts: set[str]) -> None:
        """requires_grad=True for the parameters of the named parts, False for the others.
        Frozen parts also switch to eval mode (see `train`)."""
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown model parts {sorted(unknown)}; parts are {list(PARTS)}")
        for name in PARTS:
            getattr(self, name).requires_grad_(name in parts)
        self.train(self.training)

    def trainable_parts(self) -> set[str]:
        return {name for name in PARTS
                if any(p.requires_grad for p in getattr(self, name).parameters())}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimizer should update (requires_grad True), in a fixed order."""
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> "LPASRN":
        """Like nn.Module.train, but a frozen part always stays in eval mode: BatchNorm would
        otherwise keep updating the running statistics of a part that is meant not to change."""
        super().train(mode)
        trainable = self.trainable_parts()
        for name in PARTS:
            if name not in trainable:
                getattr(self, name).eval()
        return self

    def forward(self, lr: torch.Tensor | None = None, hr: torch.Tensor | None = None,
                outputs: tuple[str, ...] = ("sr",)) -> dict[str, torch.Tensor]:
        """Compute the requested outputs:
        'sr' = generator(lr) [B, 3, 2h, 2w]; 'ocr_sr' = ocr(sr), 'ocr_hr' = ocr(hr) logits [B, T, 37];
        'emb_sr' = embedder(sr), 'emb_hr' = embedder(hr) [B, D]. Only what is asked for is run."""
        unknown = set(outputs) - set(OUTPUTS)
        if unknown:
            raise ValueError(f"unknown outputs {sorted(unknown)}; choose from {list(OUTPUTS)}")
        result: dict[str, torch.Tensor] = {}
        if {"sr", "ocr_sr", "emb_sr"} & set(outputs):
            if lr is None:
                raise ValueError(f"outputs {outputs} need the LR batch")
            result["sr"] = self.generator(lr)
        if {"ocr_hr", "emb_hr"} & set(outputs) and hr is None:
            raise ValueError(f"outputs {outputs} need the HR batch")
        for part, names in ((self.ocr, ("ocr_sr", "ocr_hr")), (self.embedder, ("emb_sr", "emb_hr"))):
            result.update(self._read(part, names, result.get("sr"), hr, outputs))
        return result

    def _read(self, part: nn.Module, names: tuple[str, str], sr, hr, outputs) -> dict[str, torch.Tensor]:
        """`part` on SR and/or HR as requested: one call over both when joint_forward is on."""
        on_sr, on_hr = names[0] in outputs, names[1] in outputs
        if on_sr and on_hr and self.joint_forward:
            both = part(torch.cat([sr, hr.to(sr.dtype)]))
            return {names[0]: both[:sr.shape[0]], names[1]: both[sr.shape[0]:]}
        out = {}
        if on_sr:
            out[names[0]] = part(sr)
        if on_hr:
            out[names[1]] = part(hr)
        return out


def build_model(generator_preset: str = "paper", ocr_preset: str = "paper", embedding_dim: int = 128,
                lightweight_embedder: bool = False, generator_overrides: dict | None = None,
                joint_forward: bool = False) -> LPASRN:
    """An LPASRN from presets; generator_overrides go to build_generator (e.g. num_blocks=4)."""
    generator = build_generator(generator_preset, **(generator_overrides or {}))
    return LPASRN(generator, SimpleCRNN(ocr_preset),
                  SiameseEmbedder(embedding_dim=embedding_dim, lightweight=lightweight_embedder),
                  joint_forward=joint_forward)
