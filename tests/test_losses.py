"""Formulas of the losses: LCOFL terms (and that they train the generator through a frozen OCR),
class weights, layout penalty, SSIM against an independent reference, embedding loss, warm-up."""
import math

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d

from lpasrn.losses.embedding import contrastive_embedding_loss, lambda_embed_at, stage_position
from lpasrn.losses.lcofl import LCOFL, class_weights_from_confusion, layout_penalty
from lpasrn.losses.pixel import l1_loss
from lpasrn.losses.ssim import ssim
from lpasrn.models.alignment import char_probabilities
from lpasrn.models.ocr_arch import SimpleCRNN
from lpasrn.plates import CHAR_TO_CLASS, CHARSET, DIGIT_CLASSES, LETTER_CLASSES, NUM_CLASSES


def one_hot_probs(texts, max_len=8):
    probs = torch.zeros(len(texts), max_len, NUM_CLASSES)
    for b, text in enumerate(texts):
        for j, c in enumerate(text):
            probs[b, j, CHAR_TO_CLASS[c]] = 1.0
    return probs


def test_layout_penalty_equals_hand_computed_value():
    texts = ["ABC1234", "ABC1D23", "ZZ99"]
    probs = one_hot_probs(texts)
    # Brazilian, position 0 (letter 'A'): 0.3 of its mass moved to the digit '7'.
    probs[0, 0, CHAR_TO_CLASS["A"]], probs[0, 0, CHAR_TO_CLASS["7"]] = 0.7, 0.3
    # Brazilian, position 3 (digit '1'): 0.2 moved to the letter 'I'.
    probs[0, 3, CHAR_TO_CLASS["1"]], probs[0, 3, CHAR_TO_CLASS["I"]] = 0.8, 0.2
    # Mercosur, position 4 (letter 'D'): 0.5 moved to '0'.
    probs[1, 4, CHAR_TO_CLASS["D"]], probs[1, 4, CHAR_TO_CLASS["0"]] = 0.5, 0.5
    # An 'other' plate read as pure nonsense: no layout prior, no penalty.
    probs[2, :4] = 0.0
    probs[2, :4, CHAR_TO_CLASS["Q"]] = 1.0
    layouts = ["brazilian", "mercosur", "other"]
    # official (Valfride/lpsr-lacd, lossPack.py): summed per plate, averaged over the 3 plates
    value = layout_penalty(probs, texts, layouts)
    assert float(value) == pytest.approx((0.4 * 0.3 + 0.5 * 0.2 + 0.4 * 0.5) / 3, abs=1e-7)
    mean = layout_penalty(probs, texts, layouts, reduction="position_mean")
    expected = (0.4 * 0.3 + 0.5 * 0.2 + 0.4 * 0.5) / 14  # mean over the 14 layout positions
    assert float(mean) == pytest.approx(expected, abs=1e-7)
    custom = layout_penalty(probs, texts, layouts, letter_on_digit=1.0, digit_on_letter=2.0)
    assert float(custom) == pytest.approx((2.0 * 0.3 + 1.0 * 0.2 + 2.0 * 0.5) / 3, abs=1e-7)
    with pytest.raises(ValueError, match="layout reduction"):
        layout_penalty(probs, texts, layouts, reduction="sum")


def test_ssim_term_is_half_of_one_minus_ssim_by_default():
    """kornia's SSIMLoss, which the official LCOFL uses, is (1 - SSIM) / 2."""
    torch.manual_seed(0)
    sr, hr = torch.rand(2, 3, 32, 96), torch.rand(2, 3, 32, 96)
    logits = torch.randn(2, 24, NUM_CLASSES)
    texts = ["ABC1234", "ABC1D23"]
    one_minus = 1.0 - float(ssim(sr, hr, window=5))
    _, official = LCOFL()(sr, hr, logits, texts)
    _, full = LCOFL(ssim_loss_scale=1.0)(sr, hr, logits, texts)
    assert float(official["ssim_loss"]) == pytest.approx(one_minus / 2, rel=1e-5)
    assert float(full["ssim_loss"]) == pytest.approx(one_minus, rel=1e-5)


def test_perfect_reading_has_zero_layout_penalty():
    texts = ["ABC1234", "QRS5T67"]
    assert float(layout_penalty(one_hot_probs(texts), texts, ["brazilian", "mercosur"])) == 0.0
    # Only 'other' plates: zero, and still a tensor in the graph.
    probs = torch.rand(1, 8, NUM_CLASSES, requires_grad=True)
    assert float(layout_penalty(probs, ["X1"], ["other"]).detach()) == 0.0


def test_class_weights_equal_hand_computed_values():
    idx = {c: i for i, c in enumerate(CHARSET)}  # character index = class - 1
    confusion = torch.zeros(37, 37)
    confusion[idx["O"], idx["O"]], confusion[idx["O"], idx["0"]], confusion[idx["O"], idx["Q"]] = 5, 3, 2
    confusion[idx["8"], idx["8"]], confusion[idx["8"], idx["B"]], confusion[idx["8"], idx["S"]] = 2, 3, 3
    confusion[idx["A"], idx["A"]] = 10
    # 'I': read as '1' at rate 0.25 (not above the threshold); deleted at rate 0.5 (not a class).
    confusion[idx["I"], idx["I"]], confusion[idx["I"], idx["1"]], confusion[idx["I"], 36] = 1, 1, 2
    confusion[36, idx["A"]] = 50  # insertions row: ignored
    weights = class_weights_from_confusion(confusion)
    expected = torch.ones(36, dtype=torch.float64)
    expected[idx["O"]] = 1.5   # confused with '0' (0.3); 'Q' at 0.2 is below 0.25
    expected[idx["8"]] = 2.0   # confused with 'B' and 'S' (0.375 each)
    assert weights.dtype == torch.float64 and torch.equal(weights, expected)
    loose = class_weights_from_confusion(confusion, threshold=0.15, step=1.0)
    assert float(loose[idx["O"]]) == 3.0 and float(loose[idx["I"]]) == 2.0
    square = class_weights_from_confusion(confusion[:36, :36])
    assert torch.equal(square[[idx["O"], idx["8"], idx["A"]]], torch.tensor([1.5, 2.0, 1.0]))
    assert float(square[idx["I"]]) == 1.5  # without the deletion column 'I' -> '1' is at rate 0.5
    with pytest.raises(ValueError):
        class_weights_from_confusion(torch.zeros(10, 10))


def frozen_ocr():
    torch.manual_seed(0)
    ocr = SimpleCRNN("tiny").eval()
    ocr.requires_grad_(False)
    return ocr


@pytest.mark.parametrize("term", ["cls", "layout", "ssim"])
def test_each_lcofl_term_trains_the_generator_output_not_the_frozen_ocr(term):
    ocr = frozen_ocr()
    torch.manual_seed(1)
    hr = torch.rand(2, 3, 32, 96)
    sr = torch.rand(2, 3, 32, 96, requires_grad=True)  # stands in for G(LR)
    weights = {"cls": (1.0, 0.0, 0.0), "layout": (0.0, 1.0, 0.0), "ssim": (0.0, 0.0, 1.0)}[term]
    loss_fn = LCOFL(*weights)
    total, terms = loss_fn(sr, hr, ocr(sr), ["ABC1234", "ABC1D23"], ["brazilian", "mercosur"],
                           class_weights=torch.full((36,), 1.5))
    assert set(terms) == {"cls", "layout", "ssim_loss"} and float(total.detach()) > 0
    total.backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0
    assert all(p.grad is None for p in ocr.parameters())


def test_cls_term_is_the_weighted_cross_entropy_at_the_aligned_frames():
    torch.manual_seed(3)
    logits = torch.randn(2, 24, NUM_CLASSES)
    texts = ["AB1", "C22"]
    class_weights = torch.ones(36)
    class_weights[CHAR_TO_CLASS["2"] - 1] = 3.0
    probs, _ = char_probabilities(logits, texts)
    nll = [-torch.log(probs[b, j, CHAR_TO_CLASS[c]]) for b, t in enumerate(texts) for j, c in enumerate(t)]
    w = [float(class_weights[CHAR_TO_CLASS[c] - 1]) for t in texts for c in t]
    expected = sum(wi * li for wi, li in zip(w, nll)) / sum(w)
    image = torch.rand(2, 3, 32, 96)
    _, terms = LCOFL()(image, image, logits, texts, None, class_weights)
    assert float(terms["cls"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(terms["ssim_loss"]) == pytest.approx(0.0, abs=1e-6)


def test_lcofl_is_lower_for_a_confident_correct_reading():
    texts = ["ABC1234"]
    good = torch.full((1, 24, NUM_CLASSES), -4.0)
    good[0, :, 0] = 4.0  # blanks everywhere except one frame per character
    for j, c in enumerate(texts[0]):
        good[0, 2 + 3 * j, 0], good[0, 2 + 3 * j, CHAR_TO_CLASS[c]] = -4.0, 8.0
    bad = good.clone()
    bad[0, 2, CHAR_TO_CLASS["A"]], bad[0, 2, CHAR_TO_CLASS["4"]] = 0.0, 8.0  # letter read as digit
    image = torch.rand(1, 3, 32, 96)
    _, good_terms = LCOFL()(image, image, good, texts, ["brazilian"])
    _, bad_terms = LCOFL()(image, image, bad, texts, ["brazilian"])
    assert float(good_terms["cls"]) < 0.01 and float(good_terms["layout"]) < 0.01
    assert float(bad_terms["cls"]) > 0.5 and float(bad_terms["layout"]) > 0.04


def reference_ssim(x, y, window=5, sigma=1.5, data_range=1.0):
    """Independent numpy/scipy SSIM: same window convention, valid convolution, per channel."""
    coords = np.arange(window) - (window - 1) / 2
    g = np.exp(-coords ** 2 / (2 * sigma ** 2))
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for img_x, img_y in zip(x, y):
        maps = []
        for a, b in zip(img_x, img_y):
            blur = lambda z: convolve2d(z, kernel, mode="valid")  # noqa: E731 (symmetric kernel)
            mx, my = blur(a), blur(b)
            vx, vy, cxy = blur(a * a) - mx ** 2, blur(b * b) - my ** 2, blur(a * b) - mx * my
            maps.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
        values.append(np.mean(maps))
    return np.array(values)


def test_ssim_matches_independent_reference_and_is_one_on_identical_images():
    torch.manual_seed(4)
    x = torch.rand(3, 3, 32, 96, dtype=torch.float64)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    y[2] = torch.rand(3, 32, 96, dtype=torch.float64)  # an unrelated image too
    per_image = ssim(x, y, reduction="none")
    expected = reference_ssim(x.numpy(), y.numpy())
    assert np.allclose(per_image.numpy(), expected, atol=1e-4)
    assert float(ssim(x.float(), y.float())) == pytest.approx(expected.mean(), abs=1e-4)
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-6)
    wide = reference_ssim(x.numpy(), y.numpy(), window=7, sigma=2.0)
    assert np.allclose(ssim(x, y, window=7, sigma=2.0, reduction="none").numpy(), wide, atol=1e-4)
    with pytest.raises(ValueError):
        ssim(x[:, :, :4, :4], y[:, :, :4, :4])


def test_l1_loss():
    assert float(l1_loss(torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.25))) == 0.25


def test_embedding_loss_is_exactly_zero_when_satisfied():
    """Unit-norm embeddings (as the embedder gives): same plate identical, different plates
    orthogonal (sqrt(2) apart, beyond the default margin 1): every term is met, the loss is 0."""
    plates = torch.eye(4, 16)  # four plates, unit vectors, pairwise sqrt(2) apart
    emb = plates[[0, 1, 1, 2, 3, 0]]  # six samples, two plates seen twice
    texts = ["AAA1111", "BBB2222", "BBB2222", "CCC3333", "DDD4444", "AAA1111"]
    assert float(contrastive_embedding_loss(emb, emb.clone(), texts)) == 0.0
    # the same embeddings with a margin beyond their distance are not satisfied
    assert float(contrastive_embedding_loss(emb, emb.clone(), texts, margin=1.5)) > 0.0


def test_embedding_loss_hand_value_positives_and_negatives_averaged_apart():
    emb_sr = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    emb_hr = torch.tensor([[0.5, 0.0], [1.0, 0.0]])
    loss = contrastive_embedding_loss(emb_sr, emb_hr, ["AAA1111", "BBB2222"], margin=2.0)
    # positives (0,0) d=.5 -> .25, (1,1) d=0 -> 0: mean .125; negatives (0,1) d=1 -> 1,
    # (1,0) d=.5 -> 2.25: mean 1.625
    assert float(loss) == pytest.approx(0.125 + 1.625, abs=1e-5)


@pytest.mark.parametrize("plates", [2, 8])
def test_embedding_loss_weighs_positives_and_negatives_equally_at_any_batch_size(plates):
    """B distinct plates give B positive and B^2 - B negative pairs; with every pull costing t^2 and
    every push (m - sqrt(2 + t^2))^2 the loss is their sum whatever B is (a mean over all pairs
    would tilt towards the push as B grows)."""
    t, margin = 0.3, 1.9
    emb_hr = torch.eye(plates, plates + 1, dtype=torch.float64)  # a simplex: all sqrt(2) apart
    emb_sr = emb_hr.clone()
    emb_sr[:, plates] = t  # every SR moved by t along a direction orthogonal to the simplex
    loss = contrastive_embedding_loss(emb_sr, emb_hr, [f"P{i}" for i in range(plates)], margin=margin)
    expected = t ** 2 + (margin - math.sqrt(2 + t ** 2)) ** 2
    assert float(loss) == pytest.approx(expected, rel=1e-9)


def test_embedding_loss_without_negatives_is_the_pull_and_stays_in_the_graph():
    emb_sr = torch.tensor([[0.0, 0.0], [0.0, 1.0]], requires_grad=True)
    emb_hr = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    loss = contrastive_embedding_loss(emb_sr, emb_hr, ["AAA1111", "AAA1111"], margin=1.0)
    # four positive pairs: d^2 = 0, 0, 1, 1 -> mean 0.5; no negatives -> push 0
    assert float(loss.detach()) == pytest.approx(0.5)
    loss.backward()
    assert emb_sr.grad is not None and float(emb_sr.grad[1, 1]) > 0


def test_embedding_loss_gradient_pulls_own_plate_and_pushes_others():
    emb_hr = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # two plates, 0.89 apart: within margin 1.5
    emb_sr = torch.tensor([[0.8, 0.6], [0.6, 0.8]], requires_grad=True)  # SR 0 between both HRs
    loss = contrastive_embedding_loss(emb_sr, emb_hr, ["AAA1111", "BBB2222"], margin=1.5)
    loss.backward()
    moved = emb_sr.detach() - 0.05 * emb_sr.grad  # one gradient-descent step
    before, after = torch.cdist(emb_sr.detach(), emb_hr), torch.cdist(moved, emb_hr)
    assert after[0, 0] < before[0, 0]  # SR 0 closer to its own HR
    assert after[0, 1] > before[0, 1] and after[1, 0] > before[1, 0]  # and further from the other plate
    again = contrastive_embedding_loss(moved, emb_hr, ["AAA1111", "BBB2222"], margin=1.5)
    assert float(again) < float(loss.detach())


def test_stage_position_is_the_end_of_the_step():
    assert stage_position(0, 0, 4) == 0.25
    assert stage_position(0, 3, 4) == 1.0
    assert stage_position(2, 1, 4) == 2.5


def test_lambda_embed_ramps_within_a_one_epoch_stage_and_is_never_zero_when_on():
    """The quickstart: a 1-epoch stage with a 1-epoch warm-up. Every step has weight > 0, rising
    to the target at the last step (the old per-epoch rule gave 0 for the whole stage)."""
    steps = 10
    weights = [lambda_embed_at(stage_position(0, step, steps), 1, 0.3) for step in range(steps)]
    assert all(w > 0 for w in weights)
    assert all(a < b for a, b in zip(weights, weights[1:]))
    assert weights[0] == pytest.approx(0.03) and weights[-1] == pytest.approx(0.3)
    assert lambda_embed_at(stage_position(0, 0, steps), 1, 0.0) == 0.0  # off only when the target is 0


def test_lambda_embed_warmup_over_several_epochs():
    assert lambda_embed_at(0.0, 10) == 0.0
    assert lambda_embed_at(5.0, 10) == pytest.approx(0.15)
    assert lambda_embed_at(10.0, 10) == pytest.approx(0.3)
    assert lambda_embed_at(25.0, 10) == pytest.approx(0.3)
    assert lambda_embed_at(0.5, 0, target=0.7) == pytest.approx(0.7)
    assert lambda_embed_at(stage_position(0, 49, 100), 4, target=1.0) == pytest.approx(0.125)


def test_layout_penalty_only_sees_digit_and_letter_classes():
    assert len(DIGIT_CLASSES) == 10 and len(LETTER_CLASSES) == 26
    probs = torch.zeros(1, 8, NUM_CLASSES)
    probs[0, :7, 0] = 1.0  # all mass on the blank: neither digit nor letter
    assert float(layout_penalty(probs, ["ABC1234"], ["brazilian"])) == 0.0
