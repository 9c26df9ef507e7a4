import pytest

from lpasrn.config import Config, config_from_dict, load_config, save_config
from lpasrn.errors import LpasrnError


def test_paper_and_quickstart_configs_load(tmp_path):
    paper = load_config("configs/lpasrn.yaml")
    assert [paper.stages.pretrain.epochs, paper.stages.warmup.epochs, paper.stages.lcofl.epochs,
            paper.stages.finetune.epochs, paper.stages.hard_mining.epochs] == [50, 30, 300, 150, 50]
    assert [paper.stages.pretrain.lr, paper.stages.warmup.lr, paper.stages.lcofl.lr,
            paper.stages.finetune.lr, paper.stages.hard_mining.lr] == [1e-3, 1e-4, 1e-4, 1e-5, 5e-6]
    quick = load_config("configs/quickstart.yaml")
    assert quick.model.generator_preset == "small" and quick.data.synthesize_if_missing


def test_set_overrides_parse_yaml_values():
    cfg = load_config("configs/quickstart.yaml", ["stages.lcofl.epochs=7", "model.msca_scales=[1.0, 0.5]",
                                                  "model.use_dcnv4=false", "loss.lambda_embed=0.5",
                                                  "stages.pretrain.lr=3e-3"])
    assert cfg.stages.lcofl.epochs == 7
    assert cfg.model.msca_scales == [1.0, 0.5]
    assert cfg.model.use_dcnv4 is False and cfg.loss.lambda_embed == 0.5
    assert cfg.stages.pretrain.lr == 3e-3  # YAML reads 3e-3 as a string; a float field takes it
    assert load_config(None, ["tracking.wandb=off"]).tracking.wandb == "off"  # YAML 1.2: not a boolean


def test_a_partly_given_stage_keeps_that_stage_defaults(tmp_path):
    # keys not given come from the stage's own default (stage 3 trains the OCR with LCOFL), not from
    # StageConfig's (frozen OCR, L1 only): `finetune: {epochs: 5}` must not freeze the OCR
    from_set = load_config(None, ["stages.finetune.epochs=5", "stages.hard_mining.hard_mining.difficulty_alpha=3"])
    path = tmp_path / "partial.yaml"
    path.write_text("stages:\n  finetune: {epochs: 5}\n  hard_mining: {hard_mining: {difficulty_alpha: 3.0}}\n")
    for cfg in (from_set, load_config(path)):
        default = Config().stages
        assert cfg.stages.finetune.epochs == 5 and cfg.stages.finetune.freeze_ocr is False
        assert cfg.stages.finetune.loss_components == default.finetune.loss_components
        assert cfg.stages.finetune.update_confusion and cfg.stages.finetune.lr == default.finetune.lr
        assert cfg.stages.hard_mining.hard_mining.difficulty_alpha == 3.0
        assert cfg.stages.hard_mining.loss_components == default.hard_mining.loss_components
        assert cfg.stages.hard_mining.epochs == default.hard_mining.epochs


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("stages:\n  lcofl:\n    epoch: 3\n")
    with pytest.raises(LpasrnError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and "stages.lcofl.epoch" in message and "did you mean 'stages.lcofl.epochs'" in message


@pytest.mark.parametrize("override, fragment", [
    ("data.batch_size=0", "below the minimum 1"),
    ("data.batch_size=abc", "expected an integer"),
    ("stages.lcofl.lr=fast", "expected a number"),
    ("model.use_dcnv4=3", "expected true/false"),
    ("model.generator_preset=huge", "not one of"),
    ("stages.lcofl.loss_components=[l1, lcoful]", "did you mean 'lcofl'"),
    ("hard_mining.difficulty_alpha=2", "unknown key; known keys: experiment, seed"),
    ("loss.embed_margin=2.0", "must be in (0, 2)"),
    ("loss.embed_margin=0", "must be in (0, 2)"),
    ("stages.hard_mining.hard_mining.curriculum_start=-0.1", "below the minimum 0.0"),
])
def test_bad_values_are_errors_naming_the_key(override, fragment):
    with pytest.raises(LpasrnError) as err:
        load_config(None, [override])
    assert override.split("=")[0].split(".")[-1] in str(err.value) or "hard_mining" in str(err.value)
    assert fragment in str(err.value)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("configs/quickstart.yaml", ["seed=5"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg and isinstance(again, Config)
    assert config_from_dict(cfg.to_dict()) == cfg
