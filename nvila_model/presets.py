"""Model size presets: the same architecture with smaller numbers for tests and the CPU demo, the paper's sizes too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from huggingface_hub.errors import StrictDataclassError

from nvila_model.config import NVILAConfig


def _vision(hidden: int, layers: int, heads: int, mlp: int, image: int, patch: int) -> dict[str, Any]:
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=mlp,
                image_size=image, patch_size=patch, vision_use_head=False)


def _llm(hidden: int, layers: int, heads: int, kv_heads: int, mlp: int, vocab: int, max_pos: int,
         rope_theta: float = 1e6) -> dict[str, Any]:
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv_heads, intermediate_size=mlp, vocab_size=vocab,
                max_position_embeddings=max_pos, rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
                tie_word_embeddings=False, use_sliding_window=False, pad_token_id=0, eos_token_id=2)


def tiny() -> NVILAConfig:
    """Unit tests and CI: ~1.3M parameters, 32 px tiles of 8x8 patches, 16 tokens per tile after 2x2 STC."""
    return NVILAConfig(
        vision_config=_vision(64, 2, 4, 128, image=32, patch=4),
        text_config=_llm(128, 2, 4, 2, 256, vocab=512, max_pos=2048),
        s2_scales=[32, 64, 96], num_video_frames=8, video_pool_size=2, max_seq_length=1024,
        center_visual_tokens=True,
    )


def small() -> NVILAConfig:
    """The CPU demo: ~6M parameters, 48 px tiles of 12x12 patches, 36 tokens per tile after 2x2 STC."""
    return NVILAConfig(
        vision_config=_vision(128, 4, 4, 384, image=48, patch=4),
        text_config=_llm(256, 4, 8, 2, 768, vocab=1024, max_pos=4096),
        s2_scales=[48, 96, 144], num_video_frames=8, video_pool_size=2, max_seq_length=2048,
        center_visual_tokens=True,
    )


def gpu_check() -> NVILAConfig:
    """bench/gpu_check.py: ~0.35B parameters, big enough for a GPU's kernels to matter and small enough to train,
    quantize and fine-tune in seconds: a SigLIP-B/16-like tower at 224 px (49 tokens per tile after 2x2 STC) and
    a Qwen2 of hidden 1024 x 16 layers. Every LLM Linear size is a multiple of 16 (FP8) and of 128 (AWQ groups)."""
    return NVILAConfig(
        vision_config=_vision(768, 12, 12, 3072, image=224, patch=16),
        text_config=_llm(1024, 16, 16, 4, 2816, vocab=32768, max_pos=8192),
        s2_scales=[224, 448], num_video_frames=8, video_pool_size=2, max_seq_length=4096,
    )


def _paper_vision() -> dict[str, Any]:
    # SigLIP so400m at 448 px, patch 14: a 32x32 feature map per tile.
    return _vision(1152, 27, 16, 4304, image=448, patch=14)


def _paper_llm() -> dict[str, Any]:
    # Qwen2.5-7B-Instruct.
    return _llm(3584, 28, 28, 4, 18944, vocab=152064, max_pos=32768)


def nvila_8b() -> NVILAConfig:
    """NVILA-8B: 2x2 STC, Dynamic-S2 at 448/896/1344, 256 video frames averaged in groups of 8."""
    return NVILAConfig(vision_config=_paper_vision(), text_config=_paper_llm(), projector="mlp_downsample",
                       s2_scales=[448, 896, 1344], s2_max_tiles=12, num_video_frames=256, video_pool_size=8,
                       image_token_id=151665, video_token_id=151666, max_seq_length=16384)


def nvila_lite_8b() -> NVILAConfig:
    """NVILA-Lite-8B: the same with 3x3 STC (121 tokens per tile)."""
    config = nvila_8b()
    config.projector = "mlp_downsample_3x3_fix"
    return config


# Sub-config fields computed from others when the config is built: cleared before a `vision.` / `text.` override
# rebuilds it, so they follow the override (a `text.num_hidden_layers` override gets that many layer types).
DERIVED_FIELDS = ("layer_types",)

PRESETS: dict[str, Callable[[], NVILAConfig]] = {
    "tiny": tiny, "small": small, "gpu-check": gpu_check, "nvila-8b": nvila_8b, "nvila-lite-8b": nvila_lite_8b,
}


def build_config(name: str, **overrides: Any) -> NVILAConfig:
    """The preset `name` with `overrides` (NVILAConfig fields, or `vision.<field>` / `text.<field>`) applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    config = PRESETS[name]()
    sub_overrides: dict[str, dict[str, Any]] = {"vision_config": {}, "text_config": {}}
    for key, value in overrides.items():
        if key.startswith(("vision.", "text.")):
            sub, field = key.split(".", 1)
            attr = f"{sub}_config"
            target = getattr(config, attr)
            sub_overrides[attr][field] = value
        else:
            target, field = config, key
        if not hasattr(target, field):
            raise ValueError(f"unknown model override {key!r} for preset {name!r}")
        if target is config:
            setattr(config, field, value)
    for attr, fields in sub_overrides.items():
        if fields:  # rebuilt, not set: a sub-config derives fields at construction (Qwen2's per-layer layer_types)
            old = getattr(config, attr)
            kept = {k: v for k, v in old.to_dict().items() if k not in DERIVED_FIELDS}
            try:
                setattr(config, attr, type(old).from_dict(kept | fields))
            except (TypeError, ValueError, StrictDataclassError) as exc:  # the sub-config's own field checks
                prefix = attr.removesuffix("_config")
                raise ValueError(f"model overrides {sorted(f'{prefix}.{k}' for k in fields)} for preset {name!r}: "
                                 f"{' '.join(str(exc).split())}") from None
    if "s2_scales" in overrides and "s2_min_tiles" not in overrides:
        config.s2_min_tiles = (config.s2_scales[-1] // config.tile_size) ** 2
    config.validate()
    return config
