import numpy as np
import pytest
import torch

from lpasrn.distributed.confusion import GAP_LABEL, CharacterConfusionTracker
from lpasrn.plates import CHARSET

GAP = len(CHARSET)
TRUTHS = ["ABC1234", "ABC1234", "BBB0000", "DOO1234", "ABC1234", "ABC1234", "SSS"]
PREDS = ["A8C1234", "ABC1234", "8B80000", "D001234", "ABC123", "ABC12344", "58S"]


def idx(char):
    return CHARSET.index(char)


def synced_tracker():
    tracker = CharacterConfusionTracker()
    tracker.update(TRUTHS, PREDS)
    tracker.sync()
    return tracker


def test_update_goes_to_deltas_until_sync():
    tracker = CharacterConfusionTracker()
    tracker.update(TRUTHS, PREDS)
    assert tracker.counts.sum() == 0  # nothing global before the sync
    assert tracker.deltas.sum() > 0
    tracker.sync()
    assert tracker.deltas.sum() == 0
    assert tracker.counts.shape == (37, 37) and tracker.counts.dtype == torch.int64


def test_counts_hand_made_case():
    counts = synced_tracker().counts
    assert counts[idx("B"), idx("8")] == 3  # once in 'A8C1234', twice in '8B80000'
    assert counts[idx("B"), idx("B")] == 4
    assert counts[idx("O"), idx("0")] == 2
    assert counts[idx("A"), idx("A")] == 4
    assert counts[idx("4"), GAP] == 1  # 'ABC123' deleted the last 4
    assert counts[GAP, idx("4")] == 1  # 'ABC12344' inserted a 4
    assert counts[idx("S"), idx("5")] == counts[idx("S"), idx("8")] == counts[idx("S"), idx("S")] == 1
    assert counts[GAP, GAP] == 0
    # every truth character lands in its row exactly once; every prediction in its column
    assert counts[:GAP].sum() == sum(map(len, TRUTHS))
    assert counts[:, :GAP].sum() == sum(map(len, PREDS))


def test_rates_and_zero_rows():
    rates = synced_tracker().rates()
    assert rates.shape == (36, 36) and rates.dtype == torch.float64
    assert rates[idx("B"), idx("8")] == 3 / 7
    assert rates[idx("O"), idx("0")] == 1.0
    # '4' occurred 5 times and was deleted once: the deletion counts in the row sum
    assert rates[idx("4"), idx("4")] == 4 / 5
    assert torch.all(rates[idx("Z")] == 0)  # never seen: zero row, no NaN
    seen_rows = [c for c in range(36) if c != idx("4") and rates[c].sum() > 0]
    assert torch.allclose(rates[seen_rows].sum(dim=1), torch.ones(len(seen_rows), dtype=torch.float64))
    assert not torch.isnan(rates).any()


def test_class_weights_hand_made_case():
    tracker = synced_tracker()
    weights = tracker.class_weights()
    assert weights.shape == (36,) and weights.dtype == torch.float64
    expected = torch.ones(36, dtype=torch.float64)
    expected[idx("B")] = 1.5  # B -> 8 at rate 3/7
    expected[idx("O")] = 1.5  # O -> 0 at rate 1.0
    expected[idx("S")] = 2.0  # S -> 5 and S -> 8, each at 1/3
    assert torch.equal(weights, expected)
    # the threshold is strict: a rate of exactly 3/7 does not count at threshold 3/7
    strict = tracker.class_weights(threshold=3 / 7, step=1.0)
    assert strict[idx("B")] == 1.0 and strict[idx("O")] == 2.0
    assert torch.equal(CharacterConfusionTracker().class_weights(), torch.ones(36, dtype=torch.float64))


def test_top_confusions_order_and_gap_label():
    top = synced_tracker().top_confusions(6)
    assert top == [("B", "8", 3), ("O", "0", 2), ("4", GAP_LABEL, 1), ("S", "5", 1), ("S", "8", 1),
                   (GAP_LABEL, "4", 1)]
    assert len(synced_tracker().top_confusions(100)) == 6  # zero counts are never listed


def test_state_dict_keeps_unsynced_deltas():
    tracker = synced_tracker()
    tracker.update(["ABC1234"], ["A8C1234"])
    restored = CharacterConfusionTracker()
    restored.load_state_dict(tracker.state_dict())
    assert torch.equal(restored.counts, tracker.counts) and torch.equal(restored.deltas, tracker.deltas)
    restored.sync()
    assert restored.counts[idx("B"), idx("8")] == 4
    with pytest.raises(ValueError):
        restored.load_state_dict({"counts": torch.zeros(3, 3, dtype=torch.int64),
                                  "deltas": torch.zeros(3, 3, dtype=torch.int64)})


def test_rejects_characters_outside_charset():
    with pytest.raises(ValueError, match="outside the plate charset"):
        CharacterConfusionTracker().update(["ABC"], ["AB?"])
    with pytest.raises(ValueError):
        CharacterConfusionTracker().update(["ABC"], [])


def test_heatmap_image():
    image = synced_tracker().heatmap_image(cell=14)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] == image.shape[1] == 18 + 37 * 14
    margin, cell = 18, 14
    b_to_8 = image[margin + idx("B") * cell + cell // 2, margin + idx("8") * cell + cell // 2]
    assert tuple(b_to_8) == (255, 146, 146)  # rate 3/7 off the diagonal: 255 * (1 - 3/7) = 146
    a_to_a = image[margin + idx("A") * cell + cell // 2, margin + idx("A") * cell + cell // 2]
    assert tuple(a_to_a) == (0, 255, 0)  # always read right: full green
    assert (image[:margin, margin:] < 128).any()  # column labels were drawn


def per_step_reference(truths, preds):
    """The counting the trainer did per step before the deferral: one Python increment per pair."""
    from lpasrn.metrics import align_strings

    counts = torch.zeros(GAP + 1, GAP + 1, dtype=torch.int64)
    index = {c: i for i, c in enumerate(CHARSET)}
    for truth, pred in zip(truths, preds):
        for t, p in align_strings(truth, pred):
            counts[GAP if t is None else index[t], GAP if p is None else index[p]] += 1
    return counts


def test_deferred_readings_count_exactly_like_per_step_decoding():
    """Greedy paths kept per step (PendingReadings) and counted once at the fixed point give the same
    counts as decoding and counting every step, on the same OCR outputs."""
    from lpasrn.distributed.confusion import PendingReadings
    from lpasrn.models.ocr_arch import greedy_decode, greedy_paths

    generator = torch.Generator().manual_seed(3)
    per_step, deferred, pending = CharacterConfusionTracker(), CharacterConfusionTracker(), PendingReadings()
    reference = torch.zeros(GAP + 1, GAP + 1, dtype=torch.int64)
    texts = ["ABC1234", "B0S1D23", "SOB0B11", "Z9"]
    all_sids, all_truths, all_readings = [], [], []
    for step in range(5):
        logits = torch.randn(6, 24, 37, generator=generator) * 3
        logits[:, ::2, 0] += 4  # many blanks: readings of plate-like length, with gaps and repeats
        truths = [texts[(step + b) % len(texts)] for b in range(6)]
        sids = torch.arange(6) + 6 * step
        readings, _ = greedy_decode(logits)
        per_step.update(truths, readings)
        reference += per_step_reference(truths, readings)
        best_class, emitted, _ = greedy_paths(logits)
        pending.add(sids, truths, best_class, emitted)
        all_sids += sids.tolist()
        all_truths += truths
        all_readings += readings
    assert deferred.deltas.sum() == 0 and len(pending) == 30  # nothing counted until the drain
    sids, truths, readings = pending.drain()
    assert sids.tolist() == all_sids and truths == all_truths and readings == all_readings
    deferred.update(truths, readings)
    assert torch.equal(deferred.deltas, per_step.deltas)
    assert torch.equal(deferred.deltas, reference) and reference.sum() > 60
    assert len(pending) == 0 and pending.drain()[1] == []
