"""The LLaVA peer: transformers' LlavaForConditionalGeneration at a preset's sizes, and its processor.

Nothing of NVILA's model code runs in the peer: the vision tower, the 2-layer GELU MLP projector, the splicing of
image features into the text and generation are transformers' own. The project's processor only prepares the same
inputs NVILA gets, in the peer's form: each image resized to one tile (no Dynamic-S2), every patch a token (no
compression), video frames as separate images (no temporal averaging), one image placeholder per visual token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nvila_model.config import NVILAConfig
from nvila_model.presets import build_config
from nvila_model.processor import NVILAProcessor
from nvila_model.train.config import ModelParams

PEER_KIND = "llava"


def peer_inputs_config(model: ModelParams, num_video_frames: int) -> NVILAConfig:
    """The processor settings of the peer: the preset's vision and LLM sizes (and its `vision.` / `text.` overrides),
    fixed resize to one tile, no compression, `num_video_frames` frames each its own image."""
    sizes = {k: v for k, v in model.overrides.items() if k.startswith(("vision.", "text."))}
    return build_config(model.preset, **sizes, projector="none", dynamic_s2=False, num_video_frames=num_video_frames,
                        video_pool_size=1)


def build_peer(config: NVILAConfig, tokenizer: Any) -> Any:
    """A fresh LlavaForConditionalGeneration with `config`'s SigLIP and Qwen2 sizes (select layer, all patches)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    text = config.text_config.to_dict() | {"model_type": "qwen2", "pad_token_id": tokenizer.pad_token_id,
                                           "eos_token_id": tokenizer.eos_token_id}
    model = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=config.vision_config.to_dict() | {"model_type": "siglip_vision_model"}, text_config=text,
        image_token_index=config.image_token_id, image_seq_length=config.tokens_per_tile,
        vision_feature_select_strategy="full", vision_feature_layer=config.vision_select_layer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.suppress_tokens = [config.image_token_id, config.video_token_id]
    return model


class PeerProcessor:
    """NVILA's processor in the peer's form: video placeholders become image placeholders (each frame is an image)
    and batches carry only what LlavaForConditionalGeneration takes."""

    MODEL_KEYS = ("input_ids", "attention_mask", "labels", "pixel_values")

    def __init__(self, inner: NVILAProcessor):
        cfg = inner.config
        if cfg.dynamic_s2 or cfg.stc_factor != 1 or cfg.video_pool_size != 1:
            raise ValueError("the peer's processor takes one tile per image, no compression, no temporal pooling")
        self.inner, self.config, self.tokenizer, self.pad_id = inner, cfg, inner.tokenizer, inner.pad_id

    def video_frame_indices(self, total_frames: int) -> list[int]:
        return self.inner.video_frame_indices(total_frames)

    def encode(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        sample = self.inner.encode(*args, **kwargs)
        ids = sample["input_ids"]
        sample["input_ids"] = ids.masked_fill(ids == self.config.video_token_id, self.config.image_token_id)
        return sample

    def pad(self, features: list[dict[str, torch.Tensor]], padding_side: str = "right") -> dict[str, Any]:
        batch = self.inner.pad(features, padding_side)
        return {k: v for k, v in batch.items() if k in self.MODEL_KEYS}

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return self.inner.decode(ids)

    def save_pretrained(self, path: str | Path) -> None:
        self.inner.save_pretrained(path)


class PeerCollator:
    """Right-padded batches (the stock recipe: no packing) with only the peer's inputs."""

    def __init__(self, processor: PeerProcessor):
        self.processor = processor

    def __call__(self, samples: list[dict[str, Any] | None]) -> dict[str, Any]:
        kept = [s for s in samples if s is not None]
        if not kept:
            raise ValueError(f"all {len(samples)} samples of this batch failed to load")
        return self.processor.pad(kept)


def load_peer(checkpoint: str | Path) -> tuple[Any, PeerProcessor]:
    """(model in eval mode, processor) of a peer checkpoint directory."""
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(str(checkpoint))
    return model.eval(), PeerProcessor(NVILAProcessor.from_pretrained(checkpoint))
