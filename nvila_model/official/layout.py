"""Facts of the released NVILA checkpoint layout (NVlabs/VILA `llava/model/llava_arch.py` save_pretrained)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Sub-folders, each saved with transformers' `save_pretrained` by the reference (config.json + safetensors).
LLM_DIR, VISION_DIR, PROJECTOR_DIR = "llm", "vision_tower", "mm_projector"
SUBFOLDERS = (LLM_DIR, VISION_DIR, PROJECTOR_DIR)

# Top-level config identity: the training package writes `llava_llama` / `LlavaLlamaModel`; the remote-code loader
# (`llava/remote_code`) rewrites it to `vila` / `VILAForCausalLM` (older uploads spell it `VILAForCasualLM`).
EXPORT_MODEL_TYPE, EXPORT_ARCHITECTURE = "llava_llama", "LlavaLlamaModel"
MODEL_TYPES = {"llava_llama": ("LlavaLlamaModel",), "vila": ("VILAForCausalLM", "VILAForCasualLM")}
PROJECTOR_MODEL_TYPE, PROJECTOR_ARCHITECTURE = "v2l_projector", "MultimodalProjector"

# Media placeholder strings of the reference tokenizer (llava/constants.py); the sentinel marks assistant turns
# when the reference builds training labels.
IMAGE_TOKEN, VIDEO_TOKEN, SENTINEL_TOKEN = "<image>", "<vila/video>", "<vila/sentinel>"

# Reference projector kind -> our Projector kind. Keys of the reference's `layers` Sequential: the 2x2/3x3 kinds
# hold the parameter-free space-to-channel block at index 0, so their weights sit one index above ours.
PROJECTOR_KINDS = {"mlp2x_gelu": "none", "mlp_downsample": "mlp_downsample",
                   "mlp_downsample_2x2_fix": "mlp_downsample_2x2_fix",
                   "mlp_downsample_3x3_fix": "mlp_downsample_3x3_fix"}
OFFICIAL_KIND = {ours: official for official, ours in PROJECTOR_KINDS.items()}
PROJECTOR_INDEX_SHIFT = {"none": 0, "mlp_downsample": 1, "mlp_downsample_2x2_fix": 1, "mlp_downsample_3x3_fix": 1}

# Encoder settings (hydra `_target_` JSON strings in config.json, llava/model/encoders/).
IMAGE_ENCODER = "llava.model.encoders.BasicImageEncoder"
VIDEO_ENCODER, POOLING_VIDEO_ENCODER = "llava.model.encoders.BasicVideoEncoder", "llava.model.encoders.TSPVideoEncoder"
ENCODER_END_TOKENS = "\n"  # both encoders append the embedding of "\n" after each image / each (pooled) frame

# transformers 4.x (the reference pins 4.46) names SigLIP weights under `vision_model.`; transformers 5 drops it.
SIGLIP_PREFIX = "vision_model."


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`; a missing or malformed file is a ValueError naming it."""
    if not path.is_file():
        raise ValueError(f"{path}: missing ({what})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def official_projector_keys(kind: str, our_keys: list[str]) -> dict[str, str]:
    """Our projector state-dict keys (`layers.I.weight`) -> the reference's (`layers.J.weight`)."""
    shift = PROJECTOR_INDEX_SHIFT[kind]
    mapping = {}
    for key in our_keys:
        prefix, index, rest = key.split(".", 2)
        assert prefix == "layers", key
        mapping[key] = f"layers.{int(index) + shift}.{rest}"
    return mapping
