"""SmoothQuant smoothing is an exact re-parameterisation of the fp32 SigLIP encoder."""

from __future__ import annotations

import pytest
import torch
from siglip_helpers import siglip_with_outliers

from nvila_model.quant.smoothquant import apply_smoothing, collect_act_absmax, smooth_groups, smoothing_scales


def test_smoothing_leaves_fp32_output_unchanged() -> None:
    model = siglip_with_outliers()
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = model(pixel_values=pixels).last_hidden_state
    gain_before = smooth_groups(model)[0].norm.weight.clone()
    stats = collect_act_absmax(model, lambda: model(pixel_values=torch.randn(4, 3, 32, 32)))
    apply_smoothing(model, stats, alpha=0.5)
    with torch.no_grad():
        out = model(pixel_values=pixels).last_hidden_state
    assert not torch.allclose(smooth_groups(model)[0].norm.weight, gain_before)  # smoothing did change weights
    # exact in real arithmetic; fp32 rounding through 30x outlier gains leaves ~1e-5 relative error
    assert ((out - ref).norm() / ref.norm()) < 1e-5
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=2e-4)


def test_smoothing_flattens_activation_outliers() -> None:
    model = siglip_with_outliers()
    calib = torch.randn(4, 3, 32, 32)
    before = collect_act_absmax(model, lambda: model(pixel_values=calib))
    apply_smoothing(model, before, alpha=0.5)
    after = collect_act_absmax(model, lambda: model(pixel_values=calib))
    for name in before:
        spread_before = before[name].max() / before[name].median()
        spread_after = after[name].max() / after[name].median()
        assert spread_after < spread_before


def test_scales_follow_the_smoothquant_formula() -> None:
    lin_a, lin_b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 5)
    with torch.no_grad():
        lin_a.weight.copy_(torch.tensor([[1.0, -4.0, 0.5], [2.0, 1.0, -0.25]]))
        lin_b.weight.fill_(0.5)
    act = torch.tensor([9.0, 1.0, 4.0])
    scales = smoothing_scales(act, [lin_a, lin_b], alpha=0.5)
    w_max = torch.tensor([2.0, 4.0, 0.5])
    torch.testing.assert_close(scales, act.sqrt() / w_max.sqrt())
    assert torch.equal(smoothing_scales(torch.tensor([0.0, 1.0, 1.0]), [lin_a], 0.5)[:1], torch.ones(1))


def test_calibration_that_misses_the_tower_is_refused() -> None:
    model = siglip_with_outliers()
    with pytest.raises(ValueError, match="calibration never reached"):
        collect_act_absmax(model, lambda: None)


def test_layers_the_calibration_never_runs_stay_unsmoothed() -> None:
    model = siglip_with_outliers()
    first_layer_only = lambda: model.encoder.layers[0](model.embeddings(torch.randn(2, 3, 32, 32)), None)  # noqa: E731
    stats = collect_act_absmax(model, first_layer_only)
    assert sorted(stats) == ["encoder.layers.0.layer_norm1", "encoder.layers.0.layer_norm2"]
    last = model.encoder.layers[1]
    before = [p.clone() for p in (last.layer_norm1.weight, last.self_attn.q_proj.weight, last.mlp.fc1.weight)]
    summary = apply_smoothing(model, stats, alpha=0.5)
    assert sorted(summary) == sorted(stats)
    after = (last.layer_norm1.weight, last.self_attn.q_proj.weight, last.mlp.fc1.weight)
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
