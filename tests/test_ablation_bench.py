"""`lpasrn bench ablation`: every variant is a valid change of the quickstart config, and the table
reports the gaps it claims."""
import dataclasses

from lpasrn.bench.ablation_bench import REPO, VARIANTS, table
from lpasrn.config import load_config

QUICKSTART = REPO / "configs" / "quickstart.yaml"


def test_every_variant_parses_and_changes_the_recipe():
    base = load_config(QUICKSTART).to_dict()
    for name, (overrides, shared_stage0) in VARIANTS.items():
        changed = load_config(QUICKSTART, overrides).to_dict()
        assert (changed != base) == bool(overrides), name
        # a shared stage 0 is only honest when the variant leaves stage 0's inputs alone
        if shared_stage0:
            for key in ("pretrain",):
                assert changed["stages"][key] == base["stages"][key], name
            assert changed["data"] == base["data"] and changed["seed"] == base["seed"], name


def test_table_reports_the_gaps():
    def section(lr, sr, hr):
        return {"lr_bicubic": {"word_acc": lr}, "sr": {"word_acc": sr}, "hr": {"word_acc": hr}}

    row = {"name": "v", "eval": {**section(0.05, 0.30, 0.8), "hr_only_ocr": section(0.02, 0.15, 0.7)}}
    row["eval"]["lr_bicubic"].update(psnr=20.0, ssim=0.6)
    row["eval"]["sr"].update(psnr=21.5, ssim=0.7)
    line = table([row]).splitlines()[-1]
    assert "0.050 / 0.300 / 0.800 | +25.0 |" in line and "0.020 / 0.150 | +13.0 |" in line
    assert "20.00 / 21.50" in line and "0.600 / 0.700" in line
    assert dataclasses.is_dataclass(load_config(QUICKSTART))
