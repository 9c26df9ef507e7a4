"""Which model outputs each loss component needs, and the weighted sum of the stage's losses.

The model is called once per step through its own forward (so DDP/DeepSpeed see every parameter
use); the losses are computed here from what it returns.

Host synchronisations: every value here stays a tensor. The terms are detached tensors that the
loop fetches in one `fetch_terms` every `train.log_every` steps, and the non-finite decision is
read once per step from the gradient norm after backward (`poison_nonfinite`, `grad_norm_finite`).
"""
from __future__ import annotations

import math

import torch

from lpasrn.losses.embedding import contrastive_embedding_loss, lambda_embed_at, stage_position
from lpasrn.losses.lcofl import LCOFL
from lpasrn.losses.pixel import l1_loss
from lpasrn.models.ocr_arch import PlateTargets, ctc_loss
from lpasrn.train.stages import embedding_loss_on

# What the model must produce for each component (see LPASRN.forward).
COMPONENT_OUTPUTS = {
    "ctc": {"ocr_hr"},
    "ctc_hr": {"ocr_hr"},
    "ctc_sr": {"sr", "ocr_sr"},
    "l1": {"sr"},
    "lcofl": {"sr", "ocr_sr"},
    "embedding": {"sr", "emb_sr", "emb_hr"},
}


def outputs_needed(components, for_metrics: bool = False, uses_generator: bool = True) -> set[str]:
    wanted = set().union(*(COMPONENT_OUTPUTS[c] for c in components))
    if for_metrics:  # validation reads the OCR on what the stage improves: SR, or HR in stage 0
        wanted |= {"sr", "ocr_sr"} if uses_generator else {"ocr_hr"}
    return wanted


class StageObjective:
    """Weighted sum of a stage's loss components; returns the total and each term (detached tensors,
    read on the host only through `fetch_terms`)."""

    def __init__(self, components, loss_cfg, embedder_trains: bool = True):
        self.cfg = loss_cfg
        # The components computed on every step (see `embedding_runs`); the runner asks the model
        # for outputs_needed(self.components).
        self.components = [c for c in components if c != "embedding" or self.embedding_runs(embedder_trains)]
        self.lcofl = LCOFL(lambda_cls=loss_cfg.lambda_cls, lambda_layout=loss_cfg.lambda_layout,
                           lambda_ssim=loss_cfg.lambda_ssim, ssim_window=loss_cfg.ssim_window,
                           digit_on_letter=loss_cfg.digit_on_letter, letter_on_digit=loss_cfg.letter_on_digit,
                           layout_reduction=loss_cfg.layout_reduction, ssim_loss_scale=loss_cfg.ssim_loss_scale)
        self.class_weights: torch.Tensor | None = None  # from the confusion matrix, per character
        self.position = 0.0  # epochs of the stage done at the end of the current step (fractional)

    def embedding_runs(self, embedder_trains: bool) -> bool:
        """Whether the embedding term (and the embedder's two forwards) is computed on the stage's steps.

        # NOTE: distributed invariant: decided once per stage from the config and from which parts
        # train, never from data or the step, so every rank requests the same outputs on every step
        # (a forward is a collective under ZeRO-3). The weight is 0 on a step only when lambda_embed
        # is 0 (the warm-up is evaluated at the end of each step, `stage_position` > 0), i.e. on all
        # of the stage's steps or on none: the term is skipped for the whole stage, never per step.
        # A trainable embedder is never skipped: DDP (no find_unused_parameters, pipeline.py) needs
        # every trainable parameter in every step's graph or it fails at the next step; there the
        # term stays in, weighted 0 (zero gradients). To save that compute, freeze the embedder.
        """
        return embedding_loss_on(["embedding"], self.cfg) or embedder_trains

    def set_position(self, epoch: int, step: int, steps_per_epoch: int) -> None:
        """Called by the loop before each step (plain host arithmetic, no synchronisation)."""
        self.position = stage_position(epoch, step, steps_per_epoch)

    def weight_of(self, component: str) -> float:
        cfg = self.cfg
        if component == "embedding":
            return lambda_embed_at(self.position, cfg.embed_warmup_epochs, cfg.lambda_embed)
        return {"ctc": 1.0, "ctc_hr": cfg.lambda_ctc_hr, "ctc_sr": cfg.lambda_ctc_sr, "l1": cfg.lambda_l1,
                "lcofl": cfg.lambda_lcofl}[component]

    def __call__(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`batch["targets"]` (PlateTargets, see `attach_targets`) is used when present, so the
        encoded texts are built once per batch; without it they are built here."""
        terms: dict[str, torch.Tensor] = {}
        details: dict[str, torch.Tensor] = {}
        targets = batch.get("targets")
        for component in self.components:
            if component in ("ctc", "ctc_hr"):
                terms[component] = ctc_loss(out["ocr_hr"].float(), batch["text"], targets)
            elif component == "ctc_sr":  # the OCR's full CTC on G(LR): a generator term
                terms["ctc_sr"] = ctc_loss(out["ocr_sr"].float(), batch["text"], targets)
            elif component == "l1":
                terms["l1"] = l1_loss(out["sr"].float(), batch["hr"])
            elif component == "lcofl":
                weights = self.class_weights
                if weights is not None:
                    weights = weights.to(out["sr"].device, torch.float32)
                total, parts = self.lcofl(out["sr"].float(), batch["hr"], out["ocr_sr"].float(), batch["text"],
                                          batch["layout"], weights)
                terms["lcofl"] = total
                details.update({f"lcofl_{k}": v.detach() for k, v in parts.items()})
            elif component == "embedding":
                terms["embedding"] = contrastive_embedding_loss(
                    out["emb_sr"].float(), out["emb_hr"].float(), batch["text"], margin=self.cfg.embed_margin)
        total = sum(self.weight_of(name) * value for name, value in terms.items())
        details.update({name: value.detach() for name, value in terms.items()})
        details["loss"] = total.detach()
        return total, details


def attach_targets(batch: dict, device) -> dict:
    """The batch with its encoded texts (`targets`) built once, from pinned memory when `device` is
    CUDA (the copy is then asynchronous and does not wait for the host)."""
    return {**batch, "targets": PlateTargets.build(batch["text"], device)}


def fetch_terms(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """All loss terms as floats in ONE device-to-host transfer (the loop calls it every log_every
    steps, not every step: each `float(tensor)` would be a host synchronisation of its own)."""
    if not terms:
        return {}
    values = torch.stack([v.detach().float().reshape(()) for v in terms.values()]).tolist()
    return dict(zip(terms, values))


def poison_nonfinite(loss: torch.Tensor) -> torch.Tensor:
    """`loss` whose gradients are all NaN when its value is not finite.

    A NaN/inf loss does not always give non-finite gradients (a constant NaN term has gradient 0).
    Multiplying by NaN when the loss is not finite (by 1 otherwise, the same value and gradient)
    makes every gradient of this rank NaN; the DDP all-reduce then carries that NaN into every
    rank's gradients, so the norm read after backward (`grad_norm_finite`) says "skip" on every
    rank at once with no collective of its own. No host synchronisation: `torch.where` on device.
    """
    finite = torch.isfinite(loss.detach())
    return loss * torch.where(finite, torch.ones_like(loss.detach()), torch.full_like(loss.detach(), float("nan")))


def grad_norm_finite(norm: torch.Tensor | float) -> bool:
    """Whether the (already all-reduced) total gradient norm is finite: the step's one host sync.

    # NOTE: distributed invariant: under DDP the gradients are averaged over ranks by backward, so
    # their norm, and this decision, are the same on every rank (bitwise: every rank reduces the
    # same averaged gradients in the same order).
    """
    if not torch.is_tensor(norm):
        return math.isfinite(norm)
    return bool(torch.isfinite(norm.detach()).item())
