"""`export_official`: a project checkpoint -> the released NVILA layout that the reference code loads."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from nvila_model.checkpoint import is_quantized, load_checkpoint
from nvila_model.manifest import write_stage_manifest
from nvila_model.modeling import NVILAForConditionalGeneration
from nvila_model.official import config_map, layout, tokens, weights
from nvila_model.processor import NVILAProcessor
from nvila_model.projector import Projector


def legacy_text_config(config_dict: dict[str, Any], dtype: str) -> dict[str, Any]:
    """Qwen2 config as transformers 4.46 reads it: `rope_theta` / `rope_scaling` at the top, `torch_dtype`."""
    out = dict(config_dict)
    rope = dict(out.get("rope_parameters") or {})
    if "rope_theta" in rope:
        out["rope_theta"] = rope.pop("rope_theta")
    out["rope_scaling"] = None if rope.get("rope_type", "default") == "default" else rope
    out["torch_dtype"] = dtype
    return out


def image_processor_config(config) -> dict[str, Any]:
    """vision_tower/preprocessor_config.json: the SigLIP image processor our processor reproduces."""
    tile = config.tile_size
    return {"image_processor_type": "SiglipImageProcessor", "do_resize": True, "size": {"height": tile, "width": tile},
            "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": [config.image_mean] * 3, "image_std": [config.image_std] * 3, "do_convert_rgb": None}


def check_template(tokenizer, processor: NVILAProcessor) -> None:
    """The reference builds prompts with the tokenizer's chat template: it must render what our processor writes."""
    where = "checkpoint tokenizer"
    if tokens.system_prompt(tokenizer, where) != processor.config.system_prompt:
        raise ValueError(f"{where}: chat_template's default system prompt differs from config system_prompt "
                         f"{processor.config.system_prompt!r}")
    if tokens.newline_id(tokenizer, where) != processor.newline_id:
        raise ValueError(f"{where}: tokenizer('\\n') differs from the processor's newline token")


def load_for_export(ckpt: Path) -> tuple[NVILAForConditionalGeneration, NVILAProcessor]:
    """The checkpoint on the CPU in the dtype it was saved in (the export keeps it); a quantized one is refused."""
    if is_quantized(ckpt):
        raise ValueError(f"{ckpt}: a quantized checkpoint has no reference layout; export the unquantized one")
    return load_checkpoint(ckpt, "cpu", dtype="auto", allow_quantized=False)


def write_llm(model, processor: NVILAProcessor, folder: Path, dtype: str) -> dict[str, Any]:
    vocab = model.config.text_config.vocab_size
    tokenizer = tokens.add_official_tokens(copy.deepcopy(processor.tokenizer), vocab)
    check_template(tokenizer, processor)
    model.language_model.save_pretrained(str(folder))
    cfg = legacy_text_config(json.loads((folder / "config.json").read_text()), dtype)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    tokens.save_official_tokenizer(tokenizer, folder)
    return cfg


def write_vision(model, folder: Path, dtype: str) -> dict[str, Any]:
    cfg = model.config.vision_config.to_dict() | {"architectures": ["SiglipVisionModel"], "torch_dtype": dtype}
    weights.save_module(model.vision_tower, folder, layout.SIGLIP_PREFIX, cfg)
    (folder / "preprocessor_config.json").write_text(json.dumps(image_processor_config(model.config), indent=2))
    return cfg


def projector_for_export(model) -> Projector:
    """The projector whose tokens the reference passes to the LLM as they are: under `center_visual_tokens=
    "running"` a copy with the running mean taken off its last Linear's bias (at inference that centring subtracts
    one fixed vector, and stitching tiles and averaging frames are linear, so this is exact)."""
    if model.config.centering != "running":
        return model.projector
    projector = copy.deepcopy(model.projector)
    last = projector.layers[-1]
    with torch.no_grad():
        last.bias.copy_(last.bias.float() - model.token_centre.mean)  # one rounding to the bias's dtype
    return projector


def export_official(ckpt: Path, out: Path) -> Path:
    """Write the project checkpoint `ckpt` to `out` in the reference layout: config.json, llm/ (Qwen2 + tokenizer
    with `<image>`, `<vila/video>`, `<vila/sentinel>`), vision_tower/ (SigLIP, `vision_model.` names, image
    processor), mm_projector/ (`layers.J` names). Returns `out`."""
    ckpt, out = Path(ckpt), Path(out)
    model, processor = load_for_export(ckpt)
    config_map.exportable(model.config)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    out.mkdir(parents=True, exist_ok=True)
    llm_cfg = write_llm(model, processor, out / layout.LLM_DIR, dtype)
    vision_cfg = write_vision(model, out / layout.VISION_DIR, dtype)
    projector_cfg = weights.save_projector(projector_for_export(model), out / layout.PROJECTOR_DIR, dtype)
    top = config_map.official_config(model.config, llm_cfg, vision_cfg, projector_cfg, dtype, str(out))
    (out / "config.json").write_text(json.dumps(top, indent=2, default=str))
    notes = []
    if model.config.video_frame_sampling != "linspace":
        notes.append(f"video_frame_sampling={model.config.video_frame_sampling!r}: the reference picks frames with "
                     "round(linspace(0, n-1, k))")
    write_stage_manifest(out, "export_official", {k: v for k, v in top.items() if not k.endswith("_cfg")},
                         inputs={"checkpoint": ckpt}, differences=notes)
    return out
