"""Evaluation maths on hand-made inputs: recognition metrics, PSNR/SSIM, track fusion, summaries."""
import math

import pytest
import torch

from lpasrn.eval.evaluate import source_group, summarize
from lpasrn.eval.fusion import fuse, highest_confidence, majority_vote, most_frequent
from lpasrn.metrics import correct_chars, edit_distance, psnr, recognition_summary
from lpasrn.losses.ssim import ssim


def test_recognition_metrics_on_hand_made_predictions():
    truths = ["ABC1234", "ABC1234", "ABC1234", "XYZ9876"]
    preds = ["ABC1234", "ABC1235", "AB1234", ""]
    assert [edit_distance(t, p) for t, p in zip(truths, preds)] == [0, 1, 1, 7]
    assert [correct_chars(t, p) for t, p in zip(truths, preds)] == [7, 6, 6, 0]
    assert correct_chars("ABC1234", "ABC1243") == 5  # same length: position by position
    summary = recognition_summary(truths, preds)
    assert summary["recognition_rate"] == 0.25
    assert summary["ge6"] == 0.75 and summary["ge5"] == 0.75
    assert summary["char_acc"] == pytest.approx(19 / 28)
    assert recognition_summary(["ABC1234"], ["ABC1243"])["ge6"] == 0.0
    assert recognition_summary(["ABC1234"], ["ABC1243"])["ge5"] == 1.0


def test_psnr_and_ssim_on_hand_made_images():
    # float64: SSIM's E[x^2] - E[x]^2 leaves ~1e-8 of float32 rounding in the "zero" variance.
    dark = torch.full((1, 3, 8, 8), 0.2, dtype=torch.float64)
    mid = torch.full((1, 3, 8, 8), 0.6, dtype=torch.float64)
    # MSE 0.16 -> 10 log10(1 / 0.16) dB.
    assert float(psnr(dark, mid)[0]) == pytest.approx(10 * math.log10(1 / 0.16), abs=1e-5)
    half = torch.full((1, 1, 4, 4), 0.5)
    assert float(psnr(torch.zeros(1, 1, 4, 4), half)[0]) == pytest.approx(6.0206, abs=1e-4)
    # Constant images: no variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1) with C1 = 0.01^2.
    c1 = 0.01 ** 2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2 ** 2 + 0.6 ** 2 + c1)
    assert float(ssim(dark, mid, window=5, reduction="none")[0]) == pytest.approx(expected, rel=1e-9)
    textured = torch.rand(2, 3, 16, 48, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim(textured, textured, reduction="none"), torch.ones(2), atol=1e-6)
    assert float(ssim(textured, 1 - textured, reduction="none")[0]) < 0  # inverted structure


def test_majority_vote_per_position_and_by_length():
    assert majority_vote(["ABC1234", "ABC1284", "ABD1234"], [0.5, 0.5, 0.5]) == "ABC1234"
    # Only the 2 readings of the modal length 7 vote; position 2 is a 1-1 tie between C (conf 0.2)
    # and X (conf 0.3): the larger summed confidence wins.
    assert majority_vote(["ABC123", "ABC1234", "ABX1234"], [0.9, 0.2, 0.3]) == "ABX1234"
    # Equal votes and equal confidences: the earliest frame wins.
    assert majority_vote(["AB", "AC"], [0.5, 0.5]) == "AB"
    assert majority_vote(["AC", "AB"], [0.5, 0.5]) == "AC"
    # A tie between lengths is broken the same way.
    assert majority_vote(["AB", "ABC"], [0.4, 0.6]) == "ABC"
    assert majority_vote(["AB", "ABC"], [0.5, 0.5]) == "AB"
    assert majority_vote(["", "", "A"], [0.0, 0.0, 0.9]) == ""


def test_highest_confidence_and_most_frequent_ties():
    assert highest_confidence(["A", "B", "C"], [0.2, 0.9, 0.9]) == "B"
    assert highest_confidence(["A", "B"], [0.0, 0.0]) == "A"
    assert most_frequent(["X", "Y", "Y", "X"], [0.1, 0.2, 0.2, 0.1]) == "Y"  # 2-2, sums 0.4 > 0.2
    assert most_frequent(["X", "Y", "Y", "X"], [0.3, 0.3, 0.3, 0.3]) == "X"  # full tie: earliest
    assert most_frequent(["X", "Y", "Y"], [0.9, 0.1, 0.1]) == "Y"  # votes before confidence


def test_fuse_takes_the_first_frames_and_rejects_bad_input():
    readings, confidences = ["AAA", "BBB", "BBB", "CCC", "CCC"], [0.9, 0.1, 0.1, 0.2, 0.2]
    assert fuse("highest_confidence", readings, confidences, 1) == "AAA"
    assert fuse("most_frequent", readings, confidences, 3) == "BBB"
    assert fuse("most_frequent", readings, confidences, 5) == "CCC"  # 2-2 with BBB, sums 0.4 > 0.2
    assert fuse("majority_vote", readings[:2], confidences[:2], 5) == "AAA"  # fewer frames: all of them
    with pytest.raises(ValueError):
        fuse("majority_vote", [], [], 3)
    with pytest.raises(ValueError):
        fuse("vote", readings, confidences, 3)
    with pytest.raises(ValueError):
        majority_vote(["A"], [0.1, 0.2])


def _record(sid, text, layout, source, track, sr, lr="", hr=None, conf=0.5, psnr_sr=20.0, ssim_sr=0.5):
    return {"sid": sid, "text": text, "layout": layout, "source": source, "track": track,
            "readings": {"lr_bicubic": lr, "sr": sr, "hr": text if hr is None else hr},
            "confidences": {"lr_bicubic": 0.1, "sr": conf, "hr": 0.9},
            "psnr": {"lr_bicubic": 15.0, "sr": psnr_sr}, "ssim": {"lr_bicubic": 0.3, "sr": ssim_sr}}


def test_summarize_groups_and_fuses_hand_made_records():
    records = [
        _record(0, "ABC1234", "brazilian", "ufpr:t1/lr-1.png", "t1", "ABC1235", conf=0.9, psnr_sr=20.0),
        _record(1, "ABC1234", "brazilian", "ufpr:t1/lr-2.png", "t1", "ABC1234", conf=0.2, psnr_sr=24.0),
        _record(2, "ABC1234", "brazilian", "ufpr:t1/lr-3.png", "t1", "ABC1234", conf=0.3, psnr_sr=22.0),
        _record(3, "DEF5G67", "mercosur", "synthetic", None, "DEF5G67", ssim_sr=0.7),
    ]
    result = summarize(records)
    assert result["sr"]["recognition_rate"] == 0.75 and result["sr"]["ge6"] == 1.0
    assert result["sr"]["psnr"] == pytest.approx((20 + 24 + 22 + 20) / 4)
    assert result["sr"]["ssim"] == pytest.approx((0.5 * 3 + 0.7) / 4)
    assert result["lr_bicubic"]["recognition_rate"] == 0.0 and result["hr"]["recognition_rate"] == 1.0
    assert "psnr" not in result["hr"]
    assert set(result["by_layout"]) == {"brazilian", "mercosur"}
    assert result["by_layout"]["brazilian"]["sr"]["recognition_rate"] == pytest.approx(2 / 3)
    assert set(result["by_source"]) == {"ufpr", "synthetic"}
    assert result["by_source"]["synthetic"]["sr"]["count"] == 1
    tracks = result["tracks"]
    assert tracks["count"] == 1 and tracks["inconsistent_text"] == 0
    # 1 frame: the first reading, wrong; 3 frames: 2 of 3 read it right; highest confidence is frame 0.
    assert tracks["frames"]["1"]["sr"]["majority_vote"]["recognition_rate"] == 0.0
    assert tracks["frames"]["3"]["sr"]["majority_vote"]["recognition_rate"] == 1.0
    assert tracks["frames"]["3"]["sr"]["most_frequent"]["recognition_rate"] == 1.0
    assert tracks["frames"]["5"]["sr"]["highest_confidence"]["recognition_rate"] == 0.0
    assert source_group("lrlpr:track-3/lr-1.png") == "lrlpr" and source_group("") == "unknown"
