"""Weights of the three reference sub-folders <-> our model's state, by name; any missing, extra or misshapen tensor
is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import Qwen2ForCausalLM, SiglipVisionModel

from nvila_model.official import layout
from nvila_model.projector import Projector


def _check_loading(info: dict[str, Any], folder: Path) -> None:
    problems = {k: sorted(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        kind, keys = next(iter(problems.items()))
        raise ValueError(f"{folder}: weights do not match its config.json ({kind}: {keys[:3]})")


def load_llm(folder: Path, dtype: torch.dtype) -> Qwen2ForCausalLM:
    """`llm/`: a Qwen2 causal LM in the transformers format (sharded or not), loaded in `dtype`."""
    llm, info = Qwen2ForCausalLM.from_pretrained(str(folder), dtype=dtype, output_loading_info=True)
    _check_loading(info, folder)
    return llm


def load_vision(folder: Path, dtype: torch.dtype) -> SiglipVisionModel:
    """`vision_tower/`: a SigLIP vision model (transformers 4 names it under `vision_model.`; both load)."""
    tower, info = SiglipVisionModel.from_pretrained(str(folder), dtype=dtype, output_loading_info=True)
    _check_loading(info, folder)
    return tower


def load_projector(folder: Path, kind: str, in_channels: int, out_channels: int, dtype: torch.dtype) -> Projector:
    """`mm_projector/model.safetensors` (the reference's `layers.J` keys) -> our Projector of `kind`."""
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ValueError(f"{folder}: no model.safetensors (pickled weights are never read)")
    with torch.device("meta"):
        projector = Projector(kind, in_channels, out_channels)
    expected = layout.official_projector_keys(kind, list(projector.state_dict()))
    with safe_open(str(weights), "pt") as handle:
        found = set(handle.keys())
        missing, extra = sorted(set(expected.values()) - found), sorted(found - set(expected.values()))
        if missing or extra:
            raise ValueError(f"{weights}: projector kind {layout.OFFICIAL_KIND[kind]!r} expects keys "
                             f"{sorted(expected.values())}; missing {missing[:3]}, unexpected {extra[:3]}")
        state = {}
        for ours, theirs in expected.items():
            tensor, want = handle.get_tensor(theirs), projector.state_dict()[ours].shape
            if tensor.shape != want:
                raise ValueError(f"{weights}: {theirs} has shape {tuple(tensor.shape)}, expected {tuple(want)} "
                                 "(mm_hidden_size / hidden_size)")
            state[ours] = tensor.to(dtype)
    projector.load_state_dict(state, strict=True, assign=True)
    return projector


def save_module(module: nn.Module, folder: Path, prefix: str, config: dict[str, Any]) -> None:
    """Write `module`'s tensors as one safetensors file with `prefix` on every key, plus its config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {prefix + k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2, default=str))


def save_projector(projector: Projector, folder: Path, dtype: str) -> dict[str, Any]:
    """`mm_projector/`: the reference's key names and config; returns the config (also embedded top-level)."""
    config = {"architectures": [layout.PROJECTOR_ARCHITECTURE], "model_type": layout.PROJECTOR_MODEL_TYPE,
              "mm_projector_type": layout.OFFICIAL_KIND[projector.kind], "torch_dtype": dtype}
    keys = layout.official_projector_keys(projector.kind, list(projector.state_dict()))
    folder.mkdir(parents=True, exist_ok=True)
    state = {keys[k]: v.detach().contiguous() for k, v in projector.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return config
