"""SimpleCRNN shapes, CTC loss and greedy decoding."""
import math

import pytest
import torch
import torch.nn.functional as F

from lpasrn.models.ocr_arch import OCR_PRESETS, SimpleCRNN, ctc_loss, greedy_decode
from lpasrn.plates import BLANK, CHAR_TO_CLASS, MAX_TEXT_LEN, NUM_CLASSES


@pytest.mark.parametrize("preset", sorted(OCR_PRESETS))
def test_ocr_gives_enough_frames_for_ctc(preset):
    logits = SimpleCRNN(preset).eval()(torch.rand(2, 3, 32, 96))
    assert logits.shape[0] == 2 and logits.shape[2] == NUM_CLASSES
    assert logits.shape[1] >= 2 * MAX_TEXT_LEN + 1


def test_tiny_preset_is_smallest():
    sizes = {p: sum(x.numel() for x in SimpleCRNN(p).parameters()) for p in OCR_PRESETS}
    assert sizes["tiny"] < sizes["small"] < sizes["paper"]
    assert sizes["tiny"] < 100_000


def test_ctc_loss_is_finite_and_matches_torch_per_sample_sum():
    torch.manual_seed(0)
    logits = torch.randn(3, 24, NUM_CLASSES, requires_grad=True)
    texts = ["ABC1234", "AA11BB22", "Z"]  # repeats need blanks: still fits in 24 frames
    loss = ctc_loss(logits, texts)
    assert torch.isfinite(loss)
    log_probs = F.log_softmax(logits.detach(), -1)
    expected = 0.0
    for b, text in enumerate(texts):
        expected += float(F.ctc_loss(log_probs[b], torch.tensor([CHAR_TO_CLASS[c] for c in text]),
                                     torch.tensor([24]), torch.tensor([len(text)]), reduction="sum"))
    assert float(loss.detach()) == pytest.approx(expected / 3, rel=1e-5)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_ctc_loss_of_impossible_target_is_zero_not_infinite():
    # 8 equal characters need 15 frames; with 10 the target cannot be emitted.
    assert float(ctc_loss(torch.randn(1, 10, NUM_CLASSES), ["AAAAAAAA"])) == 0.0


def test_greedy_decode_collapses_repeats_and_drops_blanks():
    frames = [BLANK, "A", "A", BLANK, "A", "B", "B", BLANK]
    logits = torch.zeros(2, len(frames), NUM_CLASSES)
    for t, symbol in enumerate(frames):
        logits[0, t, BLANK if symbol == BLANK else CHAR_TO_CLASS[symbol]] = 5.0
    logits[1, :, BLANK] = 5.0  # reads nothing
    texts, confidences = greedy_decode(logits)
    assert texts == ["AAB", ""]
    top = math.exp(5.0) / (math.exp(5.0) + NUM_CLASSES - 1)  # max probability of every frame
    assert float(confidences[0]) == pytest.approx(top ** 3, rel=1e-5)  # product over A, A, B
    assert float(confidences[1]) == 0.0
