"""The reference's top-level config.json <-> NVILAConfig, field by field; what we can not reproduce is refused."""

from __future__ import annotations

import json
from typing import Any

from nvila_model.config import NVILAConfig
from nvila_model.official import layout

# Fields whose only accepted value is the one we reproduce (the reference default first).
FIXED = {"mm_use_im_start_end": (False, None), "mm_use_im_patch_token": (False, None), "ps3": (False, None),
         "s2": (False, None)}
ASPECT_RATIOS = ("dynamic_s2", "resize")


def _refuse(field: str, value: Any, why: str) -> ValueError:
    return ValueError(f"config.json {field}={value!r}: {why}")


def parse_scales(value: Any) -> list[int]:
    """`s2_scales` as the reference writes it: a comma-separated string ("448,896,1344") or a list of ints."""
    try:
        scales = [int(s) for s in value.split(",")] if isinstance(value, str) else [int(s) for s in value]
    except (TypeError, ValueError):
        raise _refuse("s2_scales", value, "expected a comma-separated string or a list of integers") from None
    if not scales or scales != sorted(scales):
        raise _refuse("s2_scales", value, "scales must be given in ascending order (the reference preprocesses "
                      "in the written order but merges in sorted order)")
    return scales


def _encoder(top: dict[str, Any], field: str) -> dict[str, Any]:
    raw = top.get(field)
    if raw is None:
        return {"_target_": layout.IMAGE_ENCODER if field == "image_encoder" else layout.VIDEO_ENCODER}
    try:
        spec = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (TypeError, ValueError):
        raise _refuse(field, raw, "not a JSON object") from None
    if spec.get("start_tokens") is not None or spec.get("end_tokens", layout.ENCODER_END_TOKENS) != "\n":
        raise _refuse(field, raw, "only start_tokens=None and end_tokens='\\n' (one newline after each image or "
                      "frame group) are implemented")
    return spec


def video_pool_size(top: dict[str, Any]) -> int:
    """BasicVideoEncoder -> 1; TSPVideoEncoder with one temporal-only pool size [[k, 1, 1]] -> k."""
    spec = _encoder(top, "video_encoder")
    target = spec.get("_target_")
    if target == layout.VIDEO_ENCODER and set(spec) <= {"_target_", "start_tokens", "end_tokens"}:
        return 1
    if target != layout.POOLING_VIDEO_ENCODER:
        raise _refuse("video_encoder", target, f"only {layout.VIDEO_ENCODER} and {layout.POOLING_VIDEO_ENCODER} "
                      "are implemented")
    pools, sep = spec.get("pool_sizes"), spec.get("sep_tokens")
    if sep is not None or not isinstance(pools, list) or len(pools) != 1 or len(pools[0]) != 3 \
            or list(pools[0][1:]) != [1, 1] or int(pools[0][0]) < 1:
        raise _refuse("video_encoder", spec, "only one temporal pool size [[k, 1, 1]] without sep_tokens is "
                      "implemented (spatial pooling and several pool sizes are not)")
    return int(pools[0][0])


def image_encoder_ok(top: dict[str, Any]) -> None:
    spec = _encoder(top, "image_encoder")
    if spec.get("_target_") != layout.IMAGE_ENCODER or set(spec) - {"_target_", "start_tokens", "end_tokens"}:
        raise _refuse("image_encoder", spec, f"only {layout.IMAGE_ENCODER} is implemented")


def check_fixed_fields(top: dict[str, Any], tile: int) -> None:
    """Settings the reference has and our model does not implement: only their neutral values are accepted."""
    for field, accepted in FIXED.items():
        if top.get(field) not in accepted:
            raise _refuse(field, top.get(field), f"not implemented here (only {accepted[0]!r})")
    if top.get("mm_vision_select_feature", "cls_patch") != "cls_patch":
        raise _refuse("mm_vision_select_feature", top.get("mm_vision_select_feature"),
                      "only 'cls_patch' (every SigLIP token) is implemented; 'patch' drops the first patch token, "
                      "which leaves a non-square map")
    if top.get("vision_resolution") not in (None, -1, tile):
        raise _refuse("vision_resolution", top.get("vision_resolution"),
                      f"resizing the position embeddings away from the tower's {tile} px is not implemented")
    if (top.get("video_max_tiles") or 1) > 1:
        raise _refuse("video_max_tiles", top.get("video_max_tiles"), "tiled video frames are not implemented")
    if (top.get("fps") or 0) > 0:
        raise _refuse("fps", top.get("fps"), "sampling frames at a fixed rate is not implemented (0 = uniform)")


def s2_fields(top: dict[str, Any], tile: int) -> dict[str, Any]:
    """dynamic_s2 / image_aspect_ratio / s2_scales / max_tiles / s2_resize_output_to_scale_idx -> our S2 fields."""
    aspect, dynamic = top.get("image_aspect_ratio"), bool(top.get("dynamic_s2"))
    if aspect not in ASPECT_RATIOS or (aspect == "dynamic_s2" and not dynamic):
        raise _refuse("image_aspect_ratio", aspect, f"implemented: {ASPECT_RATIOS} ('dynamic_s2' needs "
                      "dynamic_s2: true)")
    if not dynamic:
        return {"dynamic_s2": False}
    scales = parse_scales(top.get("s2_scales"))
    if scales[0] != tile or any(s % tile for s in scales):
        raise _refuse("s2_scales", top.get("s2_scales"), f"scales must start at the vision tower's tile ({tile} px, "
                      "vision_tower/preprocessor_config.json size) and be multiples of it")
    if top.get("s2_resize_output_to_scale_idx", 0) not in (-1, len(scales) - 1):
        raise _refuse("s2_resize_output_to_scale_idx", top.get("s2_resize_output_to_scale_idx"),
                      "only merging at the largest scale (-1) is implemented")
    max_tiles = int(top.get("max_tiles") or 12)
    # dynamic_s2_preprocess ignores min_tiles: its lower bound is the largest square scale's tile count.
    return {"dynamic_s2": True, "s2_tile_images": aspect == "dynamic_s2", "s2_scales": scales,
            "s2_grid_mode": "search", "s2_min_tiles": (scales[-1] // scales[0]) ** 2, "s2_max_tiles": max_tiles}


def model_fields(top: dict[str, Any], tile: int) -> dict[str, Any]:
    """All NVILAConfig fields the top-level config decides (the sub-configs and tokenizer add the rest)."""
    check_fixed_fields(top, tile)
    image_encoder_ok(top)
    fields = s2_fields(top, tile)
    fields["vision_select_layer"] = int(top.get("mm_vision_select_layer", -2))
    fields["num_video_frames"] = int(top.get("num_video_frames") or 8)
    fields["video_pool_size"] = video_pool_size(top)
    fields["video_frame_sampling"] = "linspace"
    return fields


def official_config(config: NVILAConfig, llm_cfg: dict[str, Any], vision_cfg: dict[str, Any],
                    projector_cfg: dict[str, Any], dtype: str, out: str) -> dict[str, Any]:
    """The reference's top-level config.json for `config` (what LlavaLlamaModel.save_pretrained writes).

    `resume_path` must be set: the reference loads the vision tower and projector from their folders only when it
    is (otherwise it looks the tower up by name and builds a fresh projector)."""
    dynamic, pool = config.dynamic_s2, config.video_pool_size
    video_encoder = {"_target_": layout.VIDEO_ENCODER} if pool == 1 else \
        {"_target_": layout.POOLING_VIDEO_ENCODER, "pool_sizes": [[pool, 1, 1]]}
    return {
        "architectures": [layout.EXPORT_ARCHITECTURE], "model_type": layout.EXPORT_MODEL_TYPE,
        "resume_path": out, "llm_cfg": llm_cfg, "vision_tower_cfg": vision_cfg, "mm_projector_cfg": projector_cfg,
        "hidden_size": config.text_config.hidden_size, "mm_hidden_size": config.projector_in_channels,
        "mm_vision_select_layer": config.vision_select_layer, "mm_vision_select_feature": "cls_patch",
        "image_aspect_ratio": "dynamic_s2" if dynamic and config.s2_tile_images else "resize",
        "dynamic_s2": dynamic, "s2": False,
        "s2_scales": ",".join(str(s) for s in config.s2_scales) if dynamic else None,
        "s2_max_split_size": config.tile_size if dynamic else None,
        "s2_resize_output_to_scale_idx": -1, "min_tiles": 1, "max_tiles": config.s2_max_tiles,
        "num_video_frames": config.num_video_frames, "fps": 0.0,
        "image_encoder": json.dumps({"_target_": layout.IMAGE_ENCODER}), "video_encoder": json.dumps(video_encoder),
        "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "vision_resolution": -1,
        "interpolate_mode": "linear", "chat_template": None, "model_dtype": f"torch.{dtype}",
        "model_max_length": config.max_seq_length,
    }


def exportable(config: NVILAConfig) -> None:
    """Refuse settings the reference can not express (it always uses its own grid search and tile bounds, and
    passes the projector's tokens to the LLM as they are: a running centring's fixed mean is folded into the
    projector by the exporter, a per-item one can not be)."""
    if config.centering == "item":
        raise ValueError(f"center_visual_tokens={config.center_visual_tokens!r} (the tiny and small presets' "
                         "default): the reference does not centre each picture's visual tokens; train with "
                         "model.overrides {center_visual_tokens: running} (its mean folds into the projector) or "
                         "{center_visual_tokens: none} to export")
    if config.dynamic_s2:
        if config.s2_grid_mode != "search":
            raise ValueError(f"s2_grid_mode={config.s2_grid_mode!r}: the reference only implements the 'search' grid")
        square = (config.s2_scales[-1] // config.s2_scales[0]) ** 2
        if config.s2_min_tiles != square:
            raise ValueError(f"s2_min_tiles={config.s2_min_tiles}: the reference always uses the largest square "
                             f"scale's tile count ({square})")
    if config.projector not in layout.OFFICIAL_KIND:
        raise ValueError(f"projector={config.projector!r}: no reference projector kind")
