"""`import_official`: a released NVILA checkpoint directory -> this project's checkpoint directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PretrainedConfig

from nvila_model.config import NVILAConfig
from nvila_model.manifest import staged_output, write_stage_manifest
from nvila_model.modeling import NVILAForConditionalGeneration
from nvila_model.official import config_map, layout, tokens, weights
from nvila_model.processor import NVILAProcessor

IMPORT_KIND = "imported_official"  # meta.json "kind" of an imported checkpoint
# Top-level fields the import reads (the rest of config.json is training bookkeeping: learning rates, tune_* flags,
# resume_path, time-token text settings).
READ_FIELDS = ("model_type", "architectures", "model_dtype", "hidden_size", "mm_hidden_size", "mm_projector",
               "mm_vision_select_layer", "mm_vision_select_feature", "image_aspect_ratio", "dynamic_s2", "s2",
               "s2_scales", "s2_max_split_size", "s2_resize_output_to_scale_idx", "min_tiles", "max_tiles",
               "video_max_tiles", "num_video_frames", "fps", "image_encoder", "video_encoder", "chat_template",
               "mm_use_im_start_end", "mm_use_im_patch_token", "vision_resolution", "ps3", "model_max_length")


def read_top(src: Path) -> dict[str, Any]:
    """config.json of a released checkpoint, with its identity and sub-folders checked."""
    if not src.is_dir():
        raise ValueError(f"{src}: not a directory")
    top = layout.read_json(src / "config.json", "the checkpoint's top-level config")
    model_type, archs = top.get("model_type"), top.get("architectures") or []
    if model_type not in layout.MODEL_TYPES or not set(archs) & set(layout.MODEL_TYPES[model_type]):
        raise ValueError(f"{src / 'config.json'}: model_type={model_type!r} architectures={archs!r} is not a "
                         f"reference NVILA checkpoint (expected one of {layout.MODEL_TYPES})")
    for sub in layout.SUBFOLDERS:
        cfg = top.get(f"{sub}_cfg")
        if isinstance(cfg, str) and Path(cfg).name != sub:
            raise ValueError(f"config.json {sub}_cfg={cfg!r}: only the checkpoint's own {sub}/ folder is read")
        if not (src / sub / "config.json").is_file():
            raise ValueError(f"{src / sub}: missing sub-folder (or its config.json)")
    return top


def sub_config(folder: Path, model_type: str) -> PretrainedConfig:
    config = AutoConfig.from_pretrained(str(folder))
    if config.model_type != model_type:
        raise ValueError(f"{folder / 'config.json'}: model_type={config.model_type!r}, only {model_type!r} "
                         "is implemented")
    return config


def image_normalisation(folder: Path, tile: int) -> tuple[float, float]:
    """(mean, std) from vision_tower/preprocessor_config.json, after checking the rest matches our processor."""
    path = folder / "preprocessor_config.json"
    pp = layout.read_json(path, "the vision tower's image processor")
    size = pp.get("size") or {}
    if (size.get("height"), size.get("width")) != (tile, tile):
        raise ValueError(f"{path}: size={size} differs from the vision tower's {tile} px tile")
    expected = {"do_resize": True, "do_rescale": True, "do_normalize": True, "resample": 3}
    for field, value in expected.items():
        if pp.get(field, value) != value:
            raise ValueError(f"{path}: {field}={pp.get(field)!r}, only {value!r} (bicubic resize, then /255 and "
                             "mean/std) is implemented")
    if abs(float(pp.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-12:
        raise ValueError(f"{path}: rescale_factor={pp.get('rescale_factor')}, only 1/255 is implemented")
    stats = []
    for field in ("image_mean", "image_std"):
        values = [float(v) for v in pp.get(field) or []]
        if len(values) != 3 or len(set(values)) != 1:
            raise ValueError(f"{path}: {field}={pp.get(field)}, only one value for all three channels is implemented")
        stats.append(values[0])
    return stats[0], stats[1]


def projector_kind(src: Path, top: dict[str, Any]) -> str:
    proj = layout.read_json(src / layout.PROJECTOR_DIR / "config.json", "the projector config")
    kind = proj.get("mm_projector_type")
    if top.get("mm_projector") not in (None, kind):
        raise ValueError(f"config.json mm_projector={top['mm_projector']!r} disagrees with "
                         f"{layout.PROJECTOR_DIR}/config.json mm_projector_type={kind!r}")
    if kind not in layout.PROJECTOR_KINDS:
        raise ValueError(f"{layout.PROJECTOR_DIR}/config.json mm_projector_type={kind!r}: not implemented here "
                         f"(implemented: {sorted(layout.PROJECTOR_KINDS)})")
    return layout.PROJECTOR_KINDS[kind]


def model_dtype(top: dict[str, Any]) -> torch.dtype:
    """The reference loads every part in config.json `model_dtype` (float16 when absent)."""
    name = str(top.get("model_dtype") or "torch.float16").removeprefix("torch.")
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"config.json model_dtype={top.get('model_dtype')!r}: not a floating-point torch dtype")
    return dtype


def build_config(src: Path, top: dict[str, Any], tokenizer) -> NVILAConfig:
    """NVILAConfig from the top-level config, the three sub-configs, the image processor and the tokenizer."""
    text = sub_config(src / layout.LLM_DIR, "qwen2")
    vision = sub_config(src / layout.VISION_DIR, "siglip_vision_model")
    tile = vision.image_size
    fields = config_map.model_fields(top, tile)
    mean, std = image_normalisation(src / layout.VISION_DIR, tile)
    where = str(src / layout.LLM_DIR)
    image_id, video_id = tokens.media_token_ids(tokenizer, text.vocab_size, where)
    tokens.newline_id(tokenizer, where)
    if tokenizer.pad_token_id is None:
        raise ValueError(f"{where}: the tokenizer has no pad_token")
    limit = top.get("model_max_length") or tokenizer.model_max_length
    max_len = int(limit) if limit and limit < 10**7 else text.max_position_embeddings
    config = NVILAConfig(
        vision_config=vision, text_config=text, projector=projector_kind(src, top), image_token_id=image_id,
        video_token_id=video_id, image_token=layout.IMAGE_TOKEN, video_token=layout.VIDEO_TOKEN,
        system_prompt=tokens.system_prompt(tokenizer, where), image_mean=mean, image_std=std,
        max_seq_length=max_len, **fields)
    for field, ours in (("hidden_size", text.hidden_size), ("mm_hidden_size", config.projector_in_channels)):
        if top.get(field) not in (None, ours):
            raise ValueError(f"config.json {field}={top[field]} disagrees with the sub-folders ({ours})")
    config.validate()
    return config


def assemble(src: Path, config: NVILAConfig, dtype: torch.dtype) -> NVILAForConditionalGeneration:
    """Our model with the three parts loaded from the sub-folders (built on the meta device: no double memory)."""
    with torch.device("meta"):
        model = NVILAForConditionalGeneration(config)
    model.vision_tower = weights.load_vision(src / layout.VISION_DIR, dtype)
    model.language_model = weights.load_llm(src / layout.LLM_DIR, dtype)
    model.projector = weights.load_projector(src / layout.PROJECTOR_DIR, config.projector,
                                             config.projector_in_channels, config.text_config.hidden_size, dtype)
    model.config.vision_config = model.vision_tower.config
    model.config.text_config = model.language_model.config
    model.config.dtype = dtype
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    return model.eval()


def import_official(src: Path, out: Path) -> Path:
    """Convert the released checkpoint at `src` into a project checkpoint at `out` (config.json,
    model.safetensors, tokenizer + processor_config.json, meta.json, manifest.json). Returns `out`."""
    src, out = Path(src), Path(out)
    top = read_top(src)
    tokenizer = tokens.load_official_tokenizer(src / layout.LLM_DIR, top)
    config = build_config(src, top, tokenizer)
    dtype = model_dtype(top)
    model = assemble(src, config, dtype)
    source = {k: top[k] for k in READ_FIELDS if k in top}
    meta = {"kind": IMPORT_KIND, "source": str(src), "source_config": source, "dtype": str(dtype),
            "projector": {"official": layout.OFFICIAL_KIND[config.projector], "ours": config.projector}}
    with staged_output(out) as tmp:
        model.save_pretrained(str(tmp))
        NVILAProcessor(tokenizer, model.config).save_pretrained(tmp)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        write_stage_manifest(tmp, "import_official", source, inputs={"source": src}, dtype=str(dtype))
    return out
