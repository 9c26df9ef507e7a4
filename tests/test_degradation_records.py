"""Synthetic plates record the degradation strength their LR got, and it survives shards and readers."""

import numpy as np
import pytest

from lpasrn.data.degrade import degrade, degrade_recorded, prepare_hr
from lpasrn.data.readers import CorruptSampleError, IndexedPlateDataset, collate, decode_sample
from lpasrn.data.records import PlateRecord
from lpasrn.data.shards import DatasetWriter, encode_json, encode_png
from lpasrn.data.synth import render_plate, sample_rng, synth_record


@pytest.fixture(scope="module")
def plate_hr():
    return prepare_hr(render_plate("ABC1234", "brazilian", sample_rng(0, "t", 0)))


@pytest.mark.parametrize("name", ["paper", "realistic"])
def test_recording_changes_no_byte_of_the_lr(plate_hr, name):
    for seed in (1, 2, 3):
        lr, drawn = degrade_recorded(plate_hr, name, seed)
        assert lr.tobytes() == degrade(plate_hr, name, seed).tobytes()
        assert drawn and all(isinstance(v, float) for v in drawn.values())


def test_realistic_records_the_values_it_applied(plate_hr):
    fixed = dict(blur_sigma=(1.3, 1.3), noise_sigma=(7.0, 7.0), shot_noise=(0.25, 0.25), jpeg_prob=1.0,
                 jpeg_quality=(41, 41), extra_downscale_prob=0.0)
    _, drawn = degrade_recorded(plate_hr, "realistic", 5, **fixed)
    assert drawn == {"blur_sigma": 1.3, "downscale_factor": 1.0, "noise_std": 7.0, "shot_noise": 0.25,
                     "jpeg_quality": 41.0}
    _, no_jpeg = degrade_recorded(plate_hr, "realistic", 5, jpeg_prob=0.0, blur_sigma=(0.1, 0.1),
                                  extra_downscale_prob=1.0)
    assert "jpeg_quality" not in no_jpeg and no_jpeg["blur_sigma"] == 0.0  # sigma <= 0.2 is not applied
    assert 1.2 <= no_jpeg["downscale_factor"] <= 1.8
    draws = [degrade_recorded(plate_hr, "realistic", seed)[1] for seed in range(8)]
    assert len({d["noise_std"] for d in draws}) == 8 and all(1.0 <= d["noise_std"] <= 10.0 for d in draws)


def test_paper_records_the_strength_its_search_found(plate_hr):
    _, drawn = degrade_recorded(plate_hr, "paper", 3)
    assert set(drawn) == {"blur_sigma", "noise_std", "ssim"}
    assert drawn["noise_std"] == pytest.approx(24.0 * drawn["blur_sigma"]) and drawn["ssim"] <= 0.1


def test_synthetic_records_carry_degradation_through_shards_and_batches(tmp_path):
    records = [synth_record(0, "test", i, degradation="realistic") for i in range(3)]
    real = PlateRecord(hr=records[0].hr, lr=records[0].lr, text=records[0].text, source="real:x.png")
    with DatasetWriter(tmp_path, {"generator": "t"}, shard_size=2) as writer:
        for record in records + [real]:
            writer.write("test", record)
        writer.close()
    dataset = IndexedPlateDataset(tmp_path, "test")
    try:
        samples = [dataset[sid] for sid in range(4)]
    finally:
        dataset.close()
    assert [s["degradation"] for s in samples] == [r.degradation for r in records] + [None]
    assert all("noise_std" in r.degradation for r in records)
    assert collate(samples)["degradation"] == [s["degradation"] for s in samples]


def test_a_degradation_that_is_not_numbers_is_a_corrupt_sample():
    hr = encode_png(torch_free_image((32, 96)))
    lr = encode_png(torch_free_image((16, 48)))
    meta = {"sid": 0, "text": "ABC1234", "layout": "brazilian", "source": "s", "track": None,
            "degradation": {"blur_sigma": "strong"}}
    with pytest.raises(CorruptSampleError, match="degradation"):
        decode_sample({"hr.png": hr, "lr.png": lr, "json": encode_json(meta)}, "shard-x.tar", "k0")


def torch_free_image(size_hw):
    from PIL import Image

    return Image.fromarray(np.zeros(size_hw + (3,), np.uint8), "RGB")
