"""`lpasrn bench train` measures the runner's own step: FLOPs per sample agree with the model's own count and
the rates are positive and consistent with each other."""
import json

from conftest import write_tiny_config
from lpasrn.cli import main
from lpasrn.config import load_config
from lpasrn.data.readers import IndexedPlateDataset
from lpasrn.models.flops import model_flops_per_sample
from lpasrn.train.pipeline import build_lpasrn


def test_bench_train_reports_consistent_numbers(tiny_dataset, tmp_path, capsys):
    config = write_tiny_config(tmp_path / "cfg.yaml", tiny_dataset, tmp_path / "run")
    out = tmp_path / "bench.json"
    assert main(["bench", "train", "--config", config, "--stages", "0,1", "--steps", "2", "--batch", "4",
                 "--reader-samples", "32", "--sync-steps", "3", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["stages"]) == {"stage0_pretrain", "stage1_warmup"}
    for row in result["stages"].values():
        assert row["samples_per_s"] > 0 and 0 < row["mfu"] < 1
        # the runner's own train_step, the logging step included (issue 13: <= 2 host syncs per step)
        assert row["host_syncs_per_step"] <= 2 and row["host_syncs_counted_by"] == "tensor-to-Python conversions"
        assert abs(row["achieved_flops_per_s"] - row["samples_per_s"] * row["train_flops_per_sample"]) < 1e-3 * row[
            "achieved_flops_per_s"]
    # Stage 1 trains the generator on L1 only: its FLOPs are the generator's forward + backward.
    generator = build_lpasrn(load_config(config)).generator
    lr = IndexedPlateDataset(tiny_dataset, "train")[0]["lr"]
    expected = model_flops_per_sample(generator, lr[None].repeat(4, 1, 1, 1), train=True)["total"]
    assert abs(result["stages"]["stage1_warmup"]["train_flops_per_sample"] - expected) <= 0.05 * expected
    assert "stage1_warmup" in capsys.readouterr().out
