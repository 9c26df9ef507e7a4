"""Character confusion matrix, counted locally and summed over ranks at fixed points.

Rows are ground truth, columns are prediction. Index i < 36 is plates.CHARSET[i]; index 36 is the
gap: an inserted character (predicted where the truth has nothing) counts in row 36, a deleted
one (a truth character the OCR missed) in column 36. Pairs come from `align_strings`.

# NOTE: distributed invariant. `update` only touches this rank's local deltas; `sync` is the one
# collective (a single all-reduce of the deltas). After `sync` every rank holds bitwise-identical
# `counts`, equal to what one process would have counted over the same plates.

Host synchronisations: the training loop does not decode strings per step. `PendingReadings` keeps
each step's greedy paths on the device; they are fetched in one transfer and aligned/counted (one
`bincount`) at the fixed points, before `sync`, giving the same counts as a per-step update. Everything derived
# (`rates`, `class_weights`, `top_confusions`, `heatmap_image`) reads only the synced counts, so it
# is identical on all ranks too.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from lpasrn.distributed.sync import all_reduce_sum_
from lpasrn.metrics import align_strings
from lpasrn.fonts import mono_font
from lpasrn.losses.lcofl import class_weights_from_confusion
from lpasrn.plates import CHARSET

GAP_LABEL = "-"  # how the gap row/column is named in tables and the heatmap ('-' is not in CHARSET)
_CHAR_INDEX = {c: i for i, c in enumerate(CHARSET)}


class CharacterConfusionTracker:
    def __init__(self, num_chars: int = len(CHARSET)):
        if num_chars != len(CHARSET):
            raise ValueError(f"num_chars must be {len(CHARSET)} (the plate charset), got {num_chars}")
        self.num_chars = num_chars
        self.gap = num_chars  # index of the gap row/column
        size = num_chars + 1
        self.counts = torch.zeros(size, size, dtype=torch.int64)  # global, synced
        self.deltas = torch.zeros(size, size, dtype=torch.int64)  # this rank, since the last sync

    def _index(self, char: str | None, text: str) -> int:
        if char is None:
            return self.gap
        try:
            return _CHAR_INDEX[char]
        except KeyError:
            raise ValueError(f"character {char!r} in {text!r} is outside the plate charset") from None

    def update(self, truths: Sequence[str], preds: Sequence[str]) -> None:
        """Count the aligned (truth, prediction) pairs of a batch into this rank's local deltas."""
        if len(truths) != len(preds):
            raise ValueError(f"{len(truths)} truths but {len(preds)} predictions")
        size = self.num_chars + 1
        flat = [self._index(t, truth) * size + self._index(p, pred)
                for truth, pred in zip(truths, preds) for t, p in align_strings(truth, pred)]
        if flat:
            self.deltas += torch.bincount(torch.as_tensor(flat, dtype=torch.int64),
                                          minlength=size * size).reshape(size, size)

    def sync(self) -> None:
        """Sum every rank's deltas into the global counts and zero the deltas.

        # NOTE: call on all ranks, at the fixed points only (epoch end and before any checkpoint);
        # it is one all-reduce, so a rank that skips it hangs the others.
        """
        all_reduce_sum_(self.deltas)
        self.counts += self.deltas
        self.deltas.zero_()

    def rates(self) -> torch.Tensor:
        """float64 [36, 36]: how often each character (row) was read as each character (column),
        divided by how often it occurred. The row sum includes deletions (the gap column): a
        character that is often lost is seen that often; rows of characters never seen stay zero."""
        counts = self.counts[: self.num_chars].to(torch.float64)
        totals = counts.sum(dim=1, keepdim=True)
        rates = torch.where(totals > 0, counts / totals.clamp_min(1.0), torch.zeros_like(counts))
        return rates[:, : self.num_chars]

    def class_weights(self, threshold: float = 0.25, step: float = 0.5) -> torch.Tensor:
        """float64 [36]: LCOFL's class weights from the synced counts (one formula, in losses.lcofl)."""
        return class_weights_from_confusion(self.counts, threshold, step)

    def label(self, index: int) -> str:
        return GAP_LABEL if index == self.gap else CHARSET[index]

    def top_confusions(self, k: int = 10) -> list[tuple[str, str, int]]:
        """The k largest off-diagonal counts as (truth_char, pred_char, count), gap written as '-'.

        Ties are broken by row then column index, so the table is the same on every rank.
        """
        off_diagonal = self.counts.clone()
        off_diagonal.fill_diagonal_(0)
        flat = off_diagonal.reshape(-1)
        size = self.counts.shape[1]
        # stable sort on the negated counts keeps equal counts in row-major order
        order = torch.sort(-flat, stable=True).indices
        result = []
        for position in order.tolist()[:k]:
            count = int(flat[position])
            if count == 0:
                break
            result.append((self.label(position // size), self.label(position % size), count))
        return result

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Counts and unsynced deltas, so a checkpoint taken before `sync` loses nothing.

        The trainer syncs before every checkpoint anyway (deltas are then zero): a checkpoint with
        non-zero deltas would restore them on whatever rank loads it, and only sums stay correct.
        """
        return {"counts": self.counts.clone(), "deltas": self.deltas.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key in ("counts", "deltas"):
            if tuple(state[key].shape) != tuple(self.counts.shape):
                raise ValueError(f"confusion {key} has shape {tuple(state[key].shape)}, "
                                 f"expected {tuple(self.counts.shape)}")
        self.counts = state["counts"].detach().to("cpu", torch.int64).clone()
        self.deltas = state["deltas"].detach().to("cpu", torch.int64).clone()

    def heatmap_image(self, cell: int = 14) -> np.ndarray:
        """uint8 [H, W, 3]: the 37x37 matrix coloured by row-normalised rate, with character labels.

        Off-diagonal cells go from white (0) to red (1), diagonal cells from white to green, so
        confusions stand out from correct reads.
        """
        size = self.counts.shape[0]
        row_totals = self.counts.sum(dim=1, keepdim=True).to(torch.float64)
        rates = (self.counts.to(torch.float64) / row_totals.clamp_min(1.0)).numpy()
        margin = cell + 4
        image = Image.new("RGB", (margin + size * cell, margin + size * cell), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        font = mono_font(max(8, cell - 3))
        for row in range(size):
            for col in range(size):
                fade = int(round(255 * (1.0 - rates[row, col])))
                colour = (fade, 255, fade) if row == col else (255, fade, fade)
                x0, y0 = margin + col * cell, margin + row * cell
                draw.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=colour, outline=(220, 220, 220))
        for index in range(size):
            text = self.label(index)
            offset = margin + index * cell + cell // 4
            draw.text((offset, 1), text, fill=(0, 0, 0), font=font)  # column labels: predictions
            draw.text((2, offset - 2), text, fill=(0, 0, 0), font=font)  # row labels: ground truth
        return np.asarray(image, dtype=np.uint8).copy()




class PendingReadings:
    """Greedy paths of the training steps since the last fixed point, kept where they were computed.

    `add` only appends device tensors (no host synchronisation); `drain` moves everything to the
    host in one transfer per tensor kind and returns (sids, truths, readings) in step order, for the
    confusion counts and the miner. # NOTE: local to a rank; drained before every `sync`.
    """

    def __init__(self):
        self._sids: list[torch.Tensor] = []
        self._classes: list[torch.Tensor] = []
        self._emitted: list[torch.Tensor] = []
        self._truths: list[str] = []

    def __len__(self) -> int:
        return len(self._truths)

    def add(self, sids: torch.Tensor, truths: Sequence[str], best_class: torch.Tensor,
            emitted: torch.Tensor) -> None:
        if not len(truths) == best_class.shape[0] == emitted.shape[0] == sids.reshape(-1).shape[0]:
            raise ValueError(f"{sids.numel()} sids, {len(truths)} truths, {best_class.shape[0]} readings")
        self._sids.append(sids.detach().reshape(-1))
        self._classes.append(best_class.detach())
        self._emitted.append(emitted.detach())
        self._truths.extend(truths)

    def drain(self) -> tuple[torch.Tensor, list[str], list[str]]:
        from lpasrn.models.ocr_arch import readings_from_paths  # models import losses; keep this module light

        if not self._truths:
            return torch.zeros(0, dtype=torch.int64), [], []
        sids = torch.cat(self._sids).to("cpu", torch.int64)
        readings = readings_from_paths(torch.cat(self._classes).cpu(), torch.cat(self._emitted).cpu())
        truths = self._truths
        self.__init__()
        return sids, truths, readings
