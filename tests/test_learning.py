"""Real learning on CPU: a tiny generator and a tiny OCR, trained a few hundred steps on rendered
plates, must reduce their losses; and the combined LPASRN module freezes and runs its parts."""
import random
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from lpasrn.config import LossConfig
from lpasrn.losses.lcofl import LCOFL
from lpasrn.losses.pixel import l1_loss
from lpasrn.models.lpasrn_arch import LPASRN, build_model
from lpasrn.models.ocr_arch import ctc_loss
from lpasrn.plates import CHARSET, HR_SIZE, LR_SIZE, LAYOUTS
from lpasrn.train.objective import StageObjective, outputs_needed

FONT = (Path(sysconfig.get_paths()["purelib"]) / "fontpkg_roboto_condensed" / "files"
        / "RobotoCondensed[wght].ttf")


def random_text(rng: random.Random) -> tuple[str, str]:
    layout = rng.choice(sorted(LAYOUTS))
    text = "".join(rng.choice(CHARSET[10:] if k == "L" else CHARSET[:10]) for k in LAYOUTS[layout])
    return text, layout


def render(text: str, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """A plate-like HR image (dark text on a light plate, random tint and offset) and its LR twin:
    bicubic x0.5 of the HR with reduced contrast, a degradation the generator can learn to undo."""
    height, width = HR_SIZE
    paper = tuple(rng.randint(190, 250) for _ in range(3))
    image = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(str(FONT), 24)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = (width - (right - left)) // 2 - left + rng.randint(-2, 2)
    y = (height - (bottom - top)) // 2 - top + rng.randint(-1, 1)
    draw.text((x, y), text, font=font, fill=tuple(rng.randint(0, 50) for _ in range(3)))
    hr = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    lr_image = image.resize((LR_SIZE[1], LR_SIZE[0]), Image.BICUBIC)
    lr = torch.from_numpy(np.asarray(lr_image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return hr, 0.6 * lr + 0.2


def make_dataset(count: int, seed: int):
    rng = random.Random(seed)
    texts, layouts, hrs, lrs = [], [], [], []
    for _ in range(count):
        text, layout = random_text(rng)
        hr, lr = render(text, rng)
        texts.append(text), layouts.append(layout), hrs.append(hr), lrs.append(lr)
    return texts, layouts, torch.stack(hrs), torch.stack(lrs)


def test_tiny_generator_and_ocr_learn_on_rendered_plates():
    torch.manual_seed(0)
    texts, _, hr, lr = make_dataset(64, seed=0)
    model = build_model("tiny", "tiny", embedding_dim=16, lightweight_embedder=True)
    model.set_trainable({"generator", "ocr"})
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=5e-3)

    def dataset_losses():
        model.eval()
        with torch.no_grad():
            out = model(lr, hr, outputs=("sr", "ocr_hr"))
            losses = l1_loss(out["sr"], hr).item(), ctc_loss(out["ocr_hr"], texts).item()
        model.train()
        return losses

    initial_l1, initial_ctc = dataset_losses()
    for _ in range(200):
        index = torch.randint(0, len(texts), (8,)).tolist()
        out = model(lr[index], hr[index], outputs=("sr", "ocr_hr"))
        loss = l1_loss(out["sr"], hr[index]) + 0.1 * ctc_loss(out["ocr_hr"], [texts[i] for i in index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final_l1, final_ctc = dataset_losses()
    assert final_l1 < 0.7 * initial_l1, (initial_l1, final_l1)
    assert final_ctc < 0.7 * initial_ctc, (initial_ctc, final_ctc)


def test_lpasrn_freezes_parts_and_trains_generator_through_frozen_ocr():
    torch.manual_seed(1)
    model = build_model("tiny", "tiny", embedding_dim=16, lightweight_embedder=True)
    assert isinstance(model, LPASRN)
    model.set_trainable({"generator"})
    model.train()
    assert model.generator.training and not model.ocr.training and not model.embedder.training
    trainable = model.trainable_parameters()
    assert {id(p) for p in trainable} == {id(p) for p in model.generator.parameters()}
    texts, layouts, hr, lr = make_dataset(4, seed=1)
    out = model(lr, hr, outputs=("sr", "ocr_sr", "emb_sr", "emb_hr"))
    assert out["sr"].shape == hr.shape and out["ocr_sr"].shape[:2] == (4, 24)
    assert out["emb_sr"].shape == (4, 16)
    running_mean = model.ocr.features[0][1].running_mean.clone()
    total, _ = LCOFL()(out["sr"], hr, out["ocr_sr"], texts, layouts)
    total.backward()
    assert all(p.grad is not None for p in model.generator.parameters() if p.requires_grad)
    assert any(p.grad.abs().sum() > 0 for p in model.generator.parameters())
    assert all(p.grad is None for p in model.ocr.parameters())
    assert torch.equal(model.ocr.features[0][1].running_mean, running_mean)  # BN stats untouched
    model.set_trainable({"generator", "ocr", "embedder"})
    assert model.ocr.training and len(model.trainable_parameters()) == len(list(model.parameters()))


def test_embedding_skipped_only_when_off_for_the_stage_and_the_embedder_frozen():
    """lambda_embed 0 with a frozen embedder: the stage never asks for emb_*, so the embedder never
    runs. With a trainable embedder it still runs, weighted 0, so every trainable parameter gets a
    gradient each step (DDP without find_unused_parameters requires it). On: weight > 0 from the
    first step and rising through a 1-epoch warm-up."""
    components = ["l1", "lcofl", "embedding"]
    off = LossConfig(lambda_embed=0.0)
    skipped = StageObjective(components, off, embedder_trains=False)
    assert skipped.components == ["l1", "lcofl"]
    assert not {"emb_sr", "emb_hr"} & outputs_needed(skipped.components)
    kept = StageObjective(components, off, embedder_trains=True)
    assert kept.components == components

    torch.manual_seed(2)
    model = build_model("tiny", "tiny", embedding_dim=16, lightweight_embedder=True)
    model.set_trainable({"generator", "embedder"})
    calls = []
    model.embedder.register_forward_hook(lambda *args: calls.append(1))
    texts, layouts, hr, lr = make_dataset(4, seed=2)
    batch = {"hr": hr, "text": texts, "layout": layouts}
    out = model(lr, hr, outputs=tuple(sorted(outputs_needed(skipped.components))))
    assert calls == []  # the embedder did not run
    kept.set_position(0, 0, 10)
    out = model(lr, hr, outputs=tuple(sorted(outputs_needed(kept.components))))
    loss, terms = kept(out, batch)
    loss.backward()
    assert len(calls) == 2 and float(terms["embedding"]) > 0 and kept.weight_of("embedding") == 0.0
    assert all(p.grad is not None for p in model.embedder.parameters())  # in the graph, gradient 0

    on = StageObjective(components, LossConfig(lambda_embed=0.3, embed_warmup_epochs=1), embedder_trains=True)
    weights = []
    for step in range(10):
        on.set_position(0, step, 10)
        weights.append(on.weight_of("embedding"))
    assert weights[0] > 0 and weights[-1] == pytest.approx(0.3) and weights == sorted(weights)
