"""Atomic checkpoints and exports: a killed save or export leaves the previous one usable, and
incomplete checkpoints are passed over by --resume auto and refused by an explicit path."""
import logging

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from lpasrn.errors import LpasrnError
from lpasrn.train import checkpoint as ckpt


@pytest.fixture
def prepared():
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    yield accelerator, model
    accelerator.free_memory()


def save(accelerator, directory, name, epoch):
    return ckpt.save_checkpoint(accelerator, directory, name, {"loop": {"epoch": epoch}, "stage": "warmup"},
                                {"confusion.counts": torch.arange(4)}, keep=3, config_text="seed: 0\n")


def test_save_is_complete_and_round_trips(prepared, tmp_path):
    accelerator, _ = prepared
    path = save(accelerator, tmp_path, ckpt.checkpoint_name(1), 1)
    assert (path / ckpt.COMPLETE_MARKER).is_file() and (path / "config.yaml").read_text() == "seed: 0\n"
    state, tensors = ckpt.read_trainer_state(path)
    assert state["loop"]["epoch"] == 1 and torch.equal(tensors["confusion.counts"], torch.arange(4))
    assert ckpt.resolve_resume("auto", tmp_path) == path


def test_killed_save_leaves_previous_checkpoint_usable(prepared, tmp_path, monkeypatch):
    accelerator, _ = prepared
    good = save(accelerator, tmp_path, ckpt.checkpoint_name(1), 1)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(accelerator, "save_state", disk_full)
    with pytest.raises(OSError):
        save(accelerator, tmp_path, ckpt.checkpoint_name(2), 2)
    assert ckpt.resolve_resume("auto", tmp_path) == good
    assert not (tmp_path / ckpt.checkpoint_name(2)).exists()


def test_incomplete_checkpoint_skipped_by_auto_and_refused_by_path(prepared, tmp_path, caplog):
    accelerator, _ = prepared
    good = save(accelerator, tmp_path, ckpt.checkpoint_name(1), 1)
    newer = save(accelerator, tmp_path, ckpt.checkpoint_name(2), 2)
    (newer / ckpt.COMPLETE_MARKER).unlink()  # as if the process died before marking it complete
    with caplog.at_level(logging.WARNING):
        assert ckpt.resolve_resume("auto", tmp_path) == good
    assert "ignoring incomplete checkpoint" in caplog.text and newer.name in caplog.text
    with pytest.raises(LpasrnError, match="incomplete or corrupt"):
        ckpt.resolve_resume(str(newer), tmp_path)
    with pytest.raises(LpasrnError, match="no such checkpoint directory"):
        ckpt.resolve_resume(str(tmp_path / "nope"), tmp_path)


def test_mid_epoch_checkpoints_order_before_the_epoch_end(prepared, tmp_path):
    accelerator, _ = prepared
    save(accelerator, tmp_path, ckpt.checkpoint_name(1), 1)
    mid = save(accelerator, tmp_path, ckpt.checkpoint_name(1, 5), 1)
    assert ckpt.resolve_resume("auto", tmp_path) == mid  # 5 steps into epoch 2 is newer than epoch 1
    end = save(accelerator, tmp_path, ckpt.checkpoint_name(2), 2)
    assert ckpt.resolve_resume("auto", tmp_path) == end


def test_keep_prunes_oldest(prepared, tmp_path):
    accelerator, _ = prepared
    for epoch in range(1, 6):
        save(accelerator, tmp_path, ckpt.checkpoint_name(epoch), epoch)
    assert [p.name for p in ckpt.list_complete(tmp_path)] == ["epoch-0003", "epoch-0004", "epoch-0005"]


def test_failed_export_keeps_the_previous_best(tmp_path, monkeypatch):
    best = tmp_path / "best"
    ckpt.export_weights({"w": torch.ones(2)}, best, "seed: 0\n", {"epoch": 1})

    def killed(tensors, filename):
        with open(filename, "wb") as out:
            out.write(b"\x00" * 10)  # half a file, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.export_weights({"w": torch.zeros(2)}, best, "seed: 0\n", {"epoch": 2})
    assert torch.equal(load_file(str(best / ckpt.EXPORT_WEIGHTS))["w"], torch.ones(2))


def test_weights_from_another_model_name_the_keys(tmp_path):
    ckpt.export_weights(torch.nn.Linear(4, 3).state_dict(), tmp_path / "best", "", {})
    with pytest.raises(LpasrnError) as err:
        ckpt.check_weights_match(torch.nn.Linear(4, 5), tmp_path / "best" / ckpt.EXPORT_WEIGHTS)
    assert "different shape: bias, weight" in str(err.value)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LpasrnError, match="not a readable safetensors file"):
        ckpt.check_weights_match(torch.nn.Linear(4, 3), tmp_path / "bad.safetensors")
