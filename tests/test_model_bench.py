"""`lpasrn bench model`: interleaved timing of two models, the JSON it writes, a bad --reference."""
import argparse
import json

import pytest

from lpasrn.bench import model_bench


def test_interleaved_steps_alternate_and_are_timed_separately():
    calls = []
    rates = model_bench.time_steps_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                               batch=4, steps=3, warmup=1)
    assert calls == ["a", "b"] * 4  # warm-up round, then 3 timed rounds, A and B in turn
    assert set(rates) == {"a", "b"}
    for rate in rates.values():
        assert rate["best"] >= rate["median"] > 0 and rate["mean"] > 0


def bench_args(tmp_path, **overrides):
    parser = argparse.ArgumentParser()
    model_bench.register(parser.add_subparsers())
    args = parser.parse_args(["model", "--preset", "tiny", "--batch", "2", "--steps", "1", "--threads", "1",
                              "--no-ocr", "--json", str(tmp_path / "out.json")])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def test_bench_model_writes_generator_rates_and_flops(tmp_path):
    assert model_bench.run(bench_args(tmp_path)) == 0
    result = json.loads((tmp_path / "out.json").read_text())
    generator = result["generator"]
    assert generator["samples_per_s"] > 0 and generator["params"] > 1000
    assert generator["flops_by_op"]["grid_sampler_2d"] > 0 and result["reference"] is None


def test_reference_without_a_checkout_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="no src/models/generator.py"):
        model_bench.run(bench_args(tmp_path, reference=tmp_path))
