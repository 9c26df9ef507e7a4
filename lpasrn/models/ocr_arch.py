"""SimpleCRNN: the plate OCR that guides the generator, with CTC loss and greedy decoding.

Input is an HR-size RGB image [B, 3, 32, 96] in [0, 1]; output is per-frame logits [B, T, 37]
(class 0 = CTC blank, symbol i of plates.CHARSET = class i + 1). The conv stack halves the width
twice and the height five times, so T = 96 / 4 = 24 frames >= 2 * MAX_TEXT_LEN + 1 = 17, enough
for CTC to emit any valid text (repeated characters need a blank between them).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lpasrn.models.norm import BatchNorm2d
from lpasrn.plates import BLANK, CLASS_TO_CHAR, HR_SIZE, MAX_TEXT_LEN, NUM_CLASSES, encode

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
        seq, _ = self._run_rnn(seq)
        return self.classifier(seq)

    def _run_rnn(self, seq: torch.Tensor):
        """The LSTM, through cuDNN also when the OCR is frozen (eval mode) and the generator's
        gradient flows through it: cuDNN refuses RNN backward in eval mode, so the LSTM alone runs
        in train mode there. With dropout 0 train and eval mode are the same function (an LSTM
        has no running statistics); the conv stack's BatchNorm stays in eval mode."""
        frozen_with_grad = seq.is_cuda and not self.training and torch.is_grad_enabled()
        if not frozen_with_grad:
            return self.rnn(seq)
        if self.rnn.dropout != 0:  # a different function in train mode: the native kernel then
            with torch.backends.cudnn.flags(enabled=False):
                return self.rnn(seq)
        self.rnn.train(True)
        try:
            return self.rnn(seq)
        finally:
            self.rnn.train(False)


@dataclass(frozen=True)
class PlateTargets:
    """Encoded plate texts of a batch, built once per batch: `padded` LongTensor [B, MAX_TEXT_LEN]
    (class indices, 0 past each text) on the training device, `lengths` LongTensor [B] kept on the
    CPU (CTC reads the lengths on the host; CPU lengths spare it a device-to-host copy)."""
    padded: torch.Tensor
    lengths: torch.Tensor

    @staticmethod
    def build(texts: list[str], device) -> "PlateTargets":
        device = torch.device(device)
        padded = torch.zeros((len(texts), MAX_TEXT_LEN), dtype=torch.long)
        lengths = torch.zeros(len(texts), dtype=torch.long)
        for b, text in enumerate(texts):
            codes = encode(text)
            if len(codes) > MAX_TEXT_LEN:
                raise ValueError(f"plate text {text!r} (sample {b} of the batch) is longer than {MAX_TEXT_LEN}")
            padded[b, :len(codes)] = torch.as_tensor(codes, dtype=torch.long)
            lengths[b] = len(codes)
        if device.type == "cuda":  # pinned: the copy below is asynchronous, the host does not wait
            padded = padded.pin_memory()
        return PlateTargets(padded.to(device, non_blocking=True), lengths)


def ctc_loss(logits: torch.Tensor, texts: list[str], targets: PlateTargets | None = None) -> torch.Tensor:
    """CTC loss of logits [B, T, 37] against plate texts: per-sample negative log-likelihood
    (summed over the sequence, not divided by the text length), averaged over the batch.
    zero_infinity=True so an impossible target (longer than T allows) contributes 0, not inf.
    `targets`: the batch's texts already encoded (built here when None)."""
    batch, frames, _ = logits.shape
    if len(texts) != batch:
        raise ValueError(f"{len(texts)} texts for a batch of {batch}")
    if targets is None:
        targets = PlateTargets.build(texts, logits.device)
    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # [T, B, C]
    input_lengths = torch.full((batch,), frames, dtype=torch.long)  # CPU, like the target lengths
    per_sample = F.ctc_loss(log_probs, targets.padded.to(logits.device), input_lengths, targets.lengths,
                            blank=BLANK, reduction="none", zero_infinity=True)
    return per_sample.mean()


def greedy_paths(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best path of logits [B, T, 37], on the logits' device (no host synchronisation):
    (best class per frame [B, T] uint8, emitted [B, T] bool: the frames where a character's run
    starts, max probability per frame [B, T] float32). `readings_from_paths` turns the first two
    into strings on the host."""
    with torch.no_grad():
        probs = F.softmax(logits.float(), dim=-1)
        best_prob, best_class = probs.max(dim=-1)  # [B, T]
        previous = F.pad(best_class[:, :-1], (1, 0), value=BLANK)
        emitted = (best_class != BLANK) & (best_class != previous)  # run starts of non-blanks
    return best_class.to(torch.uint8), emitted, best_prob


def readings_from_paths(best_class, emitted) -> list[str]:
    """Texts of `greedy_paths`' (best_class, emitted), tensors or nested lists (one transfer each
    when tensors: the caller batches them to keep host synchronisations rare)."""
    if torch.is_tensor(best_class):
        best_class, emitted = best_class.tolist(), emitted.tolist()
    return ["".join(CLASS_TO_CHAR[c] for c, k in zip(classes, keep) if k)
            for classes, keep in zip(best_class, emitted)]


def greedy_decode(logits: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """Best-path decoding of logits [B, T, 37]: argmax per frame, collapse repeats, drop blanks.

    Confidence of a text = PRODUCT over its characters of the max probability at the frame where
    each character's run starts (the frame the character is emitted on), so it reads as an
    estimate of P(whole text correct). An empty reading gets confidence 0.
    Returns (texts, confidences FloatTensor[B] on the logits' device).
    """
    best_class, emitted, best_prob = greedy_paths(logits)
    with torch.no_grad():
        # log-sum over emitted frames is the product; empty readings are set to 0 below.
        log_conf = torch.where(emitted, best_prob.clamp_min(1e-30).log(), torch.zeros_like(best_prob))
        confidences = torch.where(emitted.any(dim=1), log_conf.sum(dim=1).exp(),
                                  torch.zeros(logits.shape[0], device=logits.device))
    return readings_from_paths(best_class, emitted), confidences
