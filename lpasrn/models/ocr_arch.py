"""SimpleCRNN: the plate OCR that guides the generator, with CTC loss and greedy decoding.

Input is an HR-size RGB image [B, 3, 32, 96] in [0, 1]; output is per-frame logits [B, T, 37]
(class 0 = CTC blank, symbol i of plates.CHARSET = class i + 1). The conv stack halves the width
twice and the height five times, so T = 96 / 4 = 24 frames >= 2 * MAX_TEXT_LEN + 1 = 17, enough
for CTC to emit any valid text (repeated characters need a blank between them).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lpasrn.models.norm import BatchNorm2d
from lpasrn.plates import BLANK, CLASS_TO_CHAR, HR_SIZE, NUM_CLASSES, encode

# Pooling after each conv stage: (height, width). Height 32 -> 1, width 96 -> 24.
_POOLS = ((2, 2), (2, 2), (2, 1), (2, 1), (2, 1))

# Per preset: output channels of the five conv stages and the LSTM hidden size per direction.
OCR_PRESETS: dict[str, dict] = {
    "paper": {"channels": (64, 128, 256, 256, 512), "hidden": 256},
    "small": {"channels": (32, 64, 128, 128, 256), "hidden": 128},
    "tiny": {"channels": (8, 16, 16, 32, 32), "hidden": 32},
}

NUM_FRAMES = HR_SIZE[1] // 4


def _conv_stage(in_ch: int, out_ch: int, pool: tuple[int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=pool, stride=pool),
    )


class SimpleCRNN(nn.Module):
    """Conv stack (BN + ReLU + max-pool) -> 2-layer BiLSTM -> linear to 37 classes per frame."""

    def __init__(self, preset: str = "paper"):
        super().__init__()
        if preset not in OCR_PRESETS:
            raise ValueError(f"unknown OCR preset {preset!r}; choose one of {sorted(OCR_PRESETS)}")
        spec = OCR_PRESETS[preset]
        self.preset = preset
        stages, in_ch = [], 3
        for out_ch, pool in zip(spec["channels"], _POOLS):
            stages.append(_conv_stage(in_ch, out_ch, pool))
            in_ch = out_ch
        self.features = nn.Sequential(*stages)
        self.rnn = nn.LSTM(in_ch, spec["hidden"], num_layers=2, bidirectional=True, batch_first=True)
        self.classifier = nn.Linear(2 * spec["hidden"], NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, 32, 96] in [0, 1] -> logits [B, T=24, 37]."""
        feats = self.features(images * 2.0 - 1.0)  # [B, C, 1, T]
        seq = feats.squeeze(2).transpose(1, 2)  # [B, T, C]
        # cuDNN refuses RNN backward in eval mode, and a frozen OCR runs in eval mode while the
        # generator's gradient still flows through it; the native kernel has no such limit.
        # With dropout 0 the LSTM computes the same function either way.
        use_native = seq.is_cuda and not self.training and torch.is_grad_enabled()
        with torch.backends.cudnn.flags(enabled=not use_native):
            seq, _ = self.rnn(seq)
        return self.classifier(seq)


def ctc_loss(logits: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """CTC loss of logits [B, T, 37] against plate texts: per-sample negative log-likelihood
    (summed over the sequence, not divided by the text length), averaged over the batch.
    zero_infinity=True so an impossible target (longer than T allows) contributes 0, not inf."""
    batch, frames, _ = logits.shape
    if len(texts) != batch:
        raise ValueError(f"{len(texts)} texts for a batch of {batch}")
    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # [T, B, C]
    encoded = [encode(t) for t in texts]
    targets = torch.tensor([c for e in encoded for c in e], dtype=torch.long, device=logits.device)
    target_lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long, device=logits.device)
    input_lengths = torch.full((batch,), frames, dtype=torch.long, device=logits.device)
    per_sample = F.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=BLANK,
                            reduction="none", zero_infinity=True)
    return per_sample.mean()


def greedy_decode(logits: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """Best-path decoding of logits [B, T, 37]: argmax per frame, collapse repeats, drop blanks.

    Confidence of a text = PRODUCT over its characters of the max probability at the frame where
    each character's run starts (the frame the character is emitted on), so it reads as an
    estimate of P(whole text correct). An empty reading gets confidence 0.
    Returns (texts, confidences FloatTensor[B] on the logits' device).
    """
    with torch.no_grad():
        probs = F.softmax(logits.float(), dim=-1)
        best_prob, best_class = probs.max(dim=-1)  # [B, T]
        previous = F.pad(best_class[:, :-1], (1, 0), value=BLANK)
        emitted = (best_class != BLANK) & (best_class != previous)  # run starts of non-blanks
        # log-sum over emitted frames is the product; empty readings are set to 0 below.
        log_conf = torch.where(emitted, best_prob.clamp_min(1e-30).log(), torch.zeros_like(best_prob))
        confidences = torch.where(emitted.any(dim=1), log_conf.sum(dim=1).exp(),
                                  torch.zeros(logits.shape[0], device=logits.device))
        texts = []
        for classes, keep in zip(best_class.tolist(), emitted.tolist()):
            texts.append("".join(CLASS_TO_CHAR[c] for c, k in zip(classes, keep) if k))
    return texts, confidences

