"""The training recipe's building blocks: lr schedules, the clamped SR, one OCR forward over SR and
HR, CTC on SR as a generator term, and confusion counts carried from one stage to the next."""
import math

import pytest
import torch
from safetensors.torch import save_file

from lpasrn.config import load_config
from lpasrn.errors import LpasrnError
from lpasrn.models.lpasrn_arch import build_model
from lpasrn.train.checkpoint import CONFUSION_FILE
from lpasrn.train.objective import StageObjective, outputs_needed
from lpasrn.train.schedule import apply_lr, lr_factor


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    total = 100
    factors = [lr_factor(s, total, "cosine", warmup_fraction=0.1, min_lr_ratio=0.05) for s in range(total)]
    assert factors[0] == pytest.approx(1 / 11) and factors[0] > 0  # never a wasted lr-0 step
    assert all(a < b for a, b in zip(factors[:10], factors[1:11]))  # linear warm-up, rising
    assert factors[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))  # then only down
    assert factors[-1] == pytest.approx(0.05)
    mid = 10 + (total - 1 - 10) / 2
    assert lr_factor(int(mid), total, "cosine", 0.1, 0.05) == pytest.approx(
        0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (int(mid) - 10) / 89)))
    assert lr_factor(10_000, total, "cosine", 0.1, 0.05) == pytest.approx(0.05)  # past the end: the floor


def test_constant_schedule_and_bad_names():
    assert [lr_factor(s, 10, "constant") for s in range(10)] == [1.0] * 10
    assert lr_factor(0, 10, "constant", warmup_fraction=0.5) == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, 10, "linear")
    with pytest.raises(LpasrnError, match="lr_schedule"):
        load_config(None, ["stages.lcofl.lr_schedule=step"])


def test_apply_lr_sets_every_group():
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
    opt = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:]}], lr=1.0)
    assert apply_lr(opt, 2e-3, 0.5) == pytest.approx(1e-3)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(1e-3)] * 2


def test_generator_output_is_clamped_when_asked():
    torch.manual_seed(0)
    model = build_model("tiny", "tiny", 16, True, {"clamp_output": True})
    lr = torch.rand(2, 3, 16, 48) * 3 - 1  # far outside [0, 1]: the bicubic skip overshoots
    sr = model(lr, outputs=("sr",))["sr"]
    assert float(sr.detach().min()) >= 0.0 and float(sr.detach().max()) <= 1.0
    unclamped = build_model("tiny", "tiny", 16, True, {"clamp_output": False})
    unclamped.load_state_dict(model.state_dict())
    raw = unclamped(lr, outputs=("sr",))["sr"]
    assert float(raw.detach().min()) < 0.0 and float(raw.detach().max()) > 1.0
    assert torch.equal(sr, raw.clamp(0, 1))


def test_joint_forward_reads_sr_and_hr_in_one_batch():
    """In train mode BatchNorm normalises with the batch it is given: one joint call differs from
    two separate calls, and matches the OCR run on the concatenated batch."""
    torch.manual_seed(0)
    joint = build_model("tiny", "tiny", 16, True, joint_forward=True).train()
    apart = build_model("tiny", "tiny", 16, True, joint_forward=False).train()
    apart.load_state_dict(joint.state_dict())
    lr, hr = torch.rand(4, 3, 16, 48), torch.rand(4, 3, 32, 96)
    outputs = ("sr", "ocr_sr", "ocr_hr", "emb_sr", "emb_hr")
    a, b = joint(lr, hr, outputs), apart(lr, hr, outputs)
    assert a["ocr_sr"].shape == b["ocr_sr"].shape and a["emb_hr"].shape == b["emb_hr"].shape
    assert not torch.allclose(a["ocr_hr"], b["ocr_hr"])
    ref = build_model("tiny", "tiny", 16, True).train()
    ref.load_state_dict(joint.state_dict())
    both = ref.ocr(torch.cat([a["sr"].detach(), hr]))
    torch.testing.assert_close(a["ocr_sr"], both[:4])
    torch.testing.assert_close(a["ocr_hr"], both[4:])
    apart.load_state_dict(joint.state_dict())  # (their running statistics moved differently)
    joint.eval(), apart.eval()  # eval mode: running statistics, the same either way
    a, b = joint(lr, hr, outputs), apart(lr, hr, outputs)
    torch.testing.assert_close(a["ocr_hr"], b["ocr_hr"])


def test_ctc_on_sr_is_a_generator_term():
    cfg = load_config(None, ["loss.lambda_ctc_sr=0.7"])
    assert outputs_needed(["ctc_sr"]) == {"sr", "ocr_sr"}
    objective = StageObjective(["ctc_sr"], cfg.loss)
    assert objective.weight_of("ctc_sr") == pytest.approx(0.7)
    torch.manual_seed(0)
    model = build_model("tiny", "tiny", 16, True)
    model.set_trainable({"generator"})
    batch = {"lr": torch.rand(2, 3, 16, 48), "hr": torch.rand(2, 3, 32, 96), "text": ["ABC1234", "ABC1D23"]}
    out = model(batch["lr"], batch["hr"], ("sr", "ocr_sr"))
    total, terms = objective(out, batch)
    assert float(total) == pytest.approx(0.7 * float(terms["ctc_sr"]))
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.generator.parameters())
    assert all(p.grad is None for p in model.ocr.parameters())


def test_carried_confusion_counts_are_read_and_checked(tmp_path):
    from lpasrn.train.stage_state import StageStatistics

    class Spec:
        sampler, prefix = "stream", "stage2_lcofl"

    cfg = load_config(None)
    stats = StageStatistics(cfg, Spec(), cfg.stages.lcofl, None, tmp_path)
    assert stats.carry_confusion(None) is False and stats.carry_confusion(tmp_path) is False
    counts = torch.zeros(37, 37, dtype=torch.int64)
    counts[0, 26] = 9  # '0' read as 'Q' nine times, once right: '0' is a confused class
    counts[0, 0] = 1
    save_file({"counts": counts}, str(tmp_path / CONFUSION_FILE))
    assert stats.carry_confusion(tmp_path) is True
    assert torch.equal(stats.confusion.counts, counts)
    weights = stats.class_weights()
    assert float(weights[0]) == pytest.approx(1.5) and float(weights[1:].max()) == 1.0
    save_file({"counts": torch.zeros(5, 5)}, str(tmp_path / CONFUSION_FILE))
    with pytest.raises(LpasrnError, match="confusion counts of shape"):
        stats.carry_confusion(tmp_path)
    (tmp_path / CONFUSION_FILE).write_bytes(b"not safetensors")
    with pytest.raises(LpasrnError, match=CONFUSION_FILE):
        stats.carry_confusion(tmp_path)


def test_embedder_trains_only_where_an_embedding_loss_is_computed():
    from lpasrn.train.stages import STAGES, trainable_parts

    assert trainable_parts(STAGES[4], True) == {"generator", "embedder"}
    assert trainable_parts(STAGES[4], True, embedding_on=False) == {"generator"}
    assert trainable_parts(STAGES[4], False, embedding_on=False) == {"generator", "ocr"}


def test_stage_loss_weights_override_the_global_ones_in_that_stage_only():
    from lpasrn.config import stage_loss

    cfg = load_config(None, ["loss.lambda_ctc_sr=0.1", "stages.finetune.loss_weights.lambda_ctc_sr=1.0",
                             "stages.hard_mining.loss_weights.lambda_l1=4"])
    assert stage_loss(cfg, "finetune").lambda_ctc_sr == 1.0 and stage_loss(cfg, "lcofl").lambda_ctc_sr == 0.1
    assert stage_loss(cfg, "hard_mining").lambda_l1 == 4.0 and stage_loss(cfg, "finetune").lambda_l1 == 1.0
    assert StageObjective(["ctc_sr"], stage_loss(cfg, "finetune")).weight_of("ctc_sr") == 1.0
    with pytest.raises(LpasrnError, match=r"stages.finetune.loss_weights.lambda_ctc_s'"):
        load_config(None, ["stages.finetune.loss_weights.lambda_ctc_s=1.0"])  # misspelt: named
    with pytest.raises(LpasrnError, match=r"stages.lcofl.loss_weights.lambda_l1.*below the minimum"):
        load_config(None, ["stages.lcofl.loss_weights.lambda_l1=-1"])


def test_a_stage_weight_of_zero_for_the_embedding_freezes_the_embedder():
    from lpasrn.train.stages import STAGES, stage_trainable_parts

    on = load_config(None, ["loss.lambda_embed=0.3"])
    off = load_config(None, ["loss.lambda_embed=0.3", "stages.hard_mining.loss_weights.lambda_embed=0"])
    assert stage_trainable_parts(on, STAGES[4]) == {"generator", "embedder"}
    assert stage_trainable_parts(off, STAGES[4]) == {"generator"}


def test_the_ocr_gets_its_own_lr_and_the_schedule_scales_both_groups():
    from lpasrn.train.schedule import param_groups

    cfg = load_config(None, ["stages.finetune.lr=2e-4", "stages.finetune.ocr_lr=1e-3"])
    model = build_model("tiny", "tiny", 16, True)
    model.set_trainable({"generator", "ocr"})
    groups = param_groups(model, cfg.stages.finetune)
    ocr_ids = {id(p) for p in model.ocr.parameters()}
    assert [g["lr"] for g in groups] == [2e-4, 1e-3]
    assert all(id(p) not in ocr_ids for p in groups[0]["params"]) and groups[0]["params"]
    assert {id(p) for p in groups[1]["params"]} == ocr_ids
    optimizer = torch.optim.AdamW(groups, lr=2e-4)
    assert apply_lr(optimizer, [g["lr"] for g in groups], 0.5) == pytest.approx(1e-4)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-4, 5e-4])
    # unset: one group at lr; a frozen OCR cannot have an lr of its own
    assert len(param_groups(model, load_config(None, []).stages.finetune)) == 1
    with pytest.raises(LpasrnError, match="stages.lcofl.ocr_lr"):
        load_config(None, ["stages.lcofl.ocr_lr=1e-3"])
