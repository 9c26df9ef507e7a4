"""`lpasrn evaluate` breaks accuracy down by the degradation strength synthetic plates recorded."""
import contextlib
import io
import json

import pytest

from eval_fixtures import FRAMES_PER_TRACK, SINGLES, TRACKS, tiny_export, tracked_dataset
from lpasrn.cli import main as lpasrn_main
from lpasrn.metrics import recognition_summary
from lpasrn.eval.strata import parameter_bins, tercile_edges


def test_terciles_split_values_into_low_mid_high_and_missing_into_none():
    records = [{"sid": i, "degradation": {"blur_sigma": float(v)}} for i, v in enumerate([5, 1, 3, 2, 6, 4])]
    records.append({"sid": 6, "degradation": None})
    records.append({"sid": 7, "degradation": {"noise_std": 1.0}})
    assert tercile_edges([5, 1, 3, 2, 6, 4]) == (2, 4)
    bins = parameter_bins(records, "blur_sigma")
    assert {name: sorted(r["degradation"]["blur_sigma"] for r in group) for name, group in bins.items()
            if name != "none"} == {"low": [1, 2], "mid": [3, 4], "high": [5, 6]}
    assert [r["sid"] for r in bins["none"]] == [6, 7]


@pytest.fixture(scope="module")
def evaluated(tiny_dataset, tmp_path_factory):
    export = tiny_export(tiny_dataset, tmp_path_factory)
    data = tracked_dataset(tmp_path_factory)
    out = tmp_path_factory.mktemp("strata")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert lpasrn_main(["evaluate", "--checkpoint", str(export), "--data", str(data), "--json",
                            str(out / "e.json"), "--report", str(out / "report")]) == 0
    return json.loads((out / "e.json").read_text()), out / "report", printed.getvalue()


def test_report_breaks_accuracy_down_by_each_recorded_parameter(evaluated):
    result, report, printed = evaluated
    samples = result["samples"]
    by = result["by_degradation"]
    # the 8 single synthetic plates carry realistic parameters; the 20 track frames carry none
    assert {"blur_sigma", "noise_std", "shot_noise", "downscale_factor"} <= set(by)
    for parameter, bins in by.items():
        assert sum(b["sr"]["count"] for b in bins.values()) == TRACKS * FRAMES_PER_TRACK + SINGLES
        for name, section in bins.items():
            if name == "none":
                members = [s for s in samples if parameter not in (s["degradation"] or {})]
            else:
                low, high = section["range"]
                members = [s for s in samples if parameter in (s["degradation"] or {})
                           and low <= s["degradation"][parameter] <= high]
            assert section["sr"]["count"] == len(members), (parameter, name)
            for variant in ("lr_bicubic", "sr", "hr"):
                expected = recognition_summary([s["text"] for s in members], [s["readings"][variant] for s in members])
                got = (section[variant]["recognition_rate"], section[variant]["char_acc"])
                assert got == (expected["word_acc"], expected["char_acc"]), (parameter, name, variant)
    noise = by["noise_std"]
    assert noise["low"]["range"][1] < noise["mid"]["range"][0] <= noise["mid"]["range"][1] < noise["high"]["range"][0]
    assert noise["none"]["range"] is None and noise["none"]["sr"]["count"] == TRACKS * FRAMES_PER_TRACK
    assert "by degradation strength" in printed and "noise_std" in printed
    assert "degradation strength" in (report / "summary.md").read_text()
