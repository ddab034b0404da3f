"""Writes tiny checkpoints in the released NVILA layout, as the reference (transformers 4.46) saves them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

# The reference tokenizer's added tokens, in its order (llava/constants.py), after Qwen2's own specials.
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[BOS]", "[PAD]", "<vila/sentinel>", "<image>",
            "<vila/video>"]
WORDS = ["What colour is the square?", "Which way does the dot move?", "red", "left", "You are a helpful assistant"]
CHATML = ("{% if messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' }}"
          "{% endif %}{% for message in messages if message['content'] is not none %}"
          "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

VARIANTS: dict[str, dict[str, Any]] = {
    # NVILA: Dynamic-S2 at three scales, 2x2 STC, temporal averaging of 2 frames
    "s2_2x2_pool2": dict(projector="mlp_downsample", dynamic_s2=True, aspect="dynamic_s2", select=-2,
                         video_encoder={"_target_": "llava.model.encoders.TSPVideoEncoder", "pool_sizes": [[2, 1, 1]]}),
    # NVILA-Lite-like without S2: 3x3 STC (5 -> 6 padding), a positive feature layer, no pooling
    "plain_3x3": dict(projector="mlp_downsample_3x3_fix", dynamic_s2=False, aspect="resize", select=1,
                      video_encoder={"_target_": "llava.model.encoders.BasicVideoEncoder"}),
    # VILA-1.5-like: no token compression
    "plain_mlp2x": dict(projector="mlp2x_gelu", dynamic_s2=False, aspect="resize", select=-2,
                        video_encoder={"_target_": "llava.model.encoders.BasicVideoEncoder"}),
    # the video SFT stage: S2-width projector, images resized to one tile
    "s2_resize_2x2fix": dict(projector="mlp_downsample_2x2_fix", dynamic_s2=True, aspect="resize", select=-1,
                             video_encoder={"_target_": "llava.model.encoders.BasicVideoEncoder"}),
}
SCALES = [20, 40, 60]


def official_tokenizer() -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([*WORDS, "system\n", "user\n", "assistant\n"] * 3, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        additional_special_tokens=SPECIALS[3:])
    tokenizer.chat_template = CHATML
    return tokenizer


def _legacy_json(path: Path, extra: dict[str, Any]) -> dict[str, Any]:
    cfg = json.loads(path.read_text())
    rope = cfg.pop("rope_parameters", None)
    if rope:
        cfg["rope_theta"] = rope["rope_theta"]
    cfg.pop("dtype", None)
    cfg.update(extra)
    path.write_text(json.dumps(cfg, indent=2))
    return cfg


def _projector_state(kind: str, c: int, d: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights under the reference's `layers.J` names (J = 0 is the parameter-free downsample block)."""
    if kind == "mlp2x_gelu":  # no downsample block: Linear at 0, GELU at 1, Linear at 2
        shapes = {0: ("lin", c, d), 2: ("lin", d, d)}
    elif kind == "mlp_downsample_3x3_fix":
        shapes = {1: ("ln", 9 * c), 2: ("lin", 9 * c, 3 * c), 4: ("ln", 3 * c), 5: ("lin", 3 * c, d), 7: ("lin", d, d)}
    else:
        shapes = {1: ("ln", 4 * c), 2: ("lin", 4 * c, d), 4: ("lin", d, d)}
    state = {}
    for j, spec in shapes.items():
        if spec[0] == "ln":
            state[f"layers.{j}.weight"] = 1 + 0.2 * torch.randn(spec[1], generator=gen)
            state[f"layers.{j}.bias"] = 0.1 * torch.randn(spec[1], generator=gen)
        else:
            state[f"layers.{j}.weight"] = torch.randn(spec[2], spec[1], generator=gen) / spec[1] ** 0.5
            state[f"layers.{j}.bias"] = 0.1 * torch.randn(spec[2], generator=gen)
    return state


def write_official(root: Path, variant: str = "s2_2x2_pool2", tie_word_embeddings: bool = False,
                   **top_overrides: Any) -> Path:
    """A tiny released-layout checkpoint: llm/ (Qwen2 + tokenizer), vision_tower/ (SigLIP, 20 px, 5x5 patches),
    mm_projector/, config.json. `top_overrides` replace top-level config.json fields."""
    spec, gen = VARIANTS[variant], torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    tokenizer = official_tokenizer()
    text = Qwen2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=96, vocab_size=len(tokenizer) + 8, max_position_embeddings=4096,
                       rope_parameters={"rope_type": "default", "rope_theta": 12345.0},
                       tie_word_embeddings=tie_word_embeddings, eos_token_id=2, pad_token_id=0)
    Qwen2ForCausalLM(text).save_pretrained(root / "llm")
    llm_cfg = _legacy_json(root / "llm" / "config.json", {"torch_dtype": "float32"})
    tokenizer.save_pretrained(root / "llm")
    vision = SiglipVisionConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                                image_size=20, patch_size=4, vision_use_head=False)
    vdir = root / "vision_tower"
    SiglipVisionModel(vision).save_pretrained(vdir)
    state = load_file(vdir / "model.safetensors")  # transformers 4.x names: vision_model.<...>
    save_file({f"vision_model.{k}": v for k, v in state.items()}, vdir / "model.safetensors", metadata={"format": "pt"})
    vision_cfg = _legacy_json(vdir / "config.json", {"torch_dtype": "float32"})
    (vdir / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SiglipImageProcessor", "do_resize": True, "size": {"height": 20, "width": 20},
        "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
    mm_hidden = 32 * (len(SCALES) if spec["dynamic_s2"] else 1)
    pdir = root / "mm_projector"
    pdir.mkdir()
    save_file(_projector_state(spec["projector"], mm_hidden, 48, gen), pdir / "model.safetensors",
              metadata={"format": "pt"})
    proj_cfg = {"architectures": ["MultimodalProjector"], "mm_projector_type": spec["projector"],
                "model_type": "v2l_projector", "torch_dtype": "float32"}
    (pdir / "config.json").write_text(json.dumps(proj_cfg))
    top = {
        "architectures": ["LlavaLlamaModel"], "model_type": "llava_llama", "resume_path": str(root),
        "llm_cfg": llm_cfg, "vision_tower_cfg": vision_cfg, "mm_projector_cfg": proj_cfg,
        "hidden_size": 48, "mm_hidden_size": mm_hidden, "mm_projector": spec["projector"],
        "mm_vision_select_layer": spec["select"], "mm_vision_select_feature": "cls_patch",
        "image_aspect_ratio": spec["aspect"], "dynamic_s2": spec["dynamic_s2"], "s2": False,
        "s2_scales": ",".join(map(str, SCALES)), "s2_max_split_size": 20, "s2_resize_output_to_scale_idx": -1,
        "min_tiles": 1, "max_tiles": 12, "num_video_frames": 4, "fps": 0.0,
        "image_encoder": json.dumps({"_target_": "llava.model.encoders.BasicImageEncoder"}),
        "video_encoder": json.dumps(spec["video_encoder"]), "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False, "model_dtype": "torch.float32", "num_time_tokens": 0,
        "time_token_format": "<t{t}>", "chat_template": None, "mm_projector_lr": None, "tune_language_model": True,
    }
    top.update(top_overrides)
    (root / "config.json").write_text(json.dumps(top, indent=2))
    return root
