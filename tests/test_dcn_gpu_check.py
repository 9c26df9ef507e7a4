"""The GPU check's comparison (run here with the PyTorch path on both sides) and its CPU-only skip."""
import copy

import torch

from lpasrn.models import dcn_gpu_check


def test_compare_paths_is_zero_for_the_same_layer_and_sees_a_changed_weight():
    _, layer = dcn_gpu_check.paired_layers(channels=16, groups=2, device="cpu")
    x = torch.randn(2, 16, 4, 8)
    errors = dcn_gpu_check.compare_paths(layer, copy.deepcopy(layer), x, autocast=False)
    assert {"output", "grad input", "grad offset_mask.weight", "grad value_proj.weight"} <= set(errors)
    assert max(errors.values()) == 0
    changed = copy.deepcopy(layer)
    with torch.no_grad():
        changed.offset_mask.bias[0] += 0.5  # one tap's dx of group 0
    errors = dcn_gpu_check.compare_paths(changed, layer, x, autocast=False)
    assert errors["output"] > dcn_gpu_check.TOLERANCES["fp32"]
    assert errors["grad offset_mask.weight"] > dcn_gpu_check.TOLERANCES["fp32"]


def test_bf16_autocast_comparison_stays_within_its_tolerance():
    _, layer = dcn_gpu_check.paired_layers(channels=16, groups=2, device="cpu")
    errors = dcn_gpu_check.compare_paths(layer, copy.deepcopy(layer), torch.randn(2, 16, 4, 8), autocast=True)
    assert max(errors.values()) == 0  # same path, same precision: deterministic


def test_main_skips_without_cuda(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the branch a CPU-only machine takes
    assert dcn_gpu_check.main() == 0
    assert capsys.readouterr().out.startswith("SKIP dcnv4: no CUDA device")
