"""NVILAForConditionalGeneration: SigLIP tower -> STC projector -> Qwen2, with media tokens spliced into the text."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    GenerationMixin,
    PreTrainedModel,
    Qwen2ForCausalLM,
    SiglipVisionModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from nvila_model.attention import VARLEN_KERNELS
from nvila_model.config import IGNORE_INDEX, NVILAConfig
from nvila_model.dynamic_s2 import merge_scales, num_tiles, stitch
from nvila_model.projector import Projector
from nvila_model.video import temporal_pool

# media_layout kinds (see ARCHITECTURE.md)
KIND_S2_IMAGE, KIND_TILE_IMAGE, KIND_VIDEO = 0, 1, 2


def tiles_of(layout_row: list[int], config: NVILAConfig) -> int:
    """How many tiles of `pixel_values` one media_layout row (kind, rows, cols, frames) owns."""
    kind, rows, cols, frames = layout_row
    if kind == KIND_S2_IMAGE:
        return num_tiles(config.s2_scales, config.tile_size, cols, rows)
    if kind == KIND_TILE_IMAGE:
        return 1
    if kind == KIND_VIDEO:
        return frames
    raise ValueError(f"unknown media kind {kind} in media_layout")


def scale_maps(layout_row: list[int], tiles_NhwC: torch.Tensor, config: NVILAConfig) -> torch.Tensor:
    """One media item's tile features [n, h, w, C] -> the projector's input [tiles, h, w, num_scales * C]: a
    Dynamic-S2 image's scales merged; a one-tile image or video frame under an S2 projector repeats its single map per
    scale (what S2 gives when all scales equal the tile); otherwise the features as they are."""
    kind, rows, cols, _frames = layout_row
    if kind == KIND_S2_IMAGE:
        return merge_scales(tiles_NhwC, config.s2_scales, config.tile_size, cols, rows)
    return tiles_NhwC.repeat(1, 1, 1, config.num_scales) if config.num_scales > 1 else tiles_NhwC


class RunningCentre(nn.Module):
    """`center_visual_tokens="running"`: the mean half of a BatchNorm over visual tokens. In training it subtracts
    the micro-batch's mean visual token, the gradient flowing through that mean as through BatchNorm's (so no
    parameter is pushed along the direction every token shares), and folds the mean into a running average; at
    inference it subtracts that average, a constant the released layout holds as the projector's last bias.
    Hand-written because torch's BatchNorm also divides each channel by its spread, which `item` centring (the
    alternative it is measured against) does not. Under data parallelism each rank averages its own micro-batches
    (no all-reduce, unlike SyncBatchNorm): the checkpoint keeps the saving rank's average."""

    # BatchNorm's: the average weighs about the last 10 training micro-batches (over the first 10 it is their plain
    # mean, not leaning towards the zeros it starts from). The shared mean keeps growing while a stage trains
    # (3 to 9 in 300 steps of bench/visual_centering.py) and settles as its learning rate decays; at 0.01 the
    # average still lagged the last batches' mean by 3 times the tokens' spread and the test answers were noise.
    MOMENTUM = 0.1

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float32))  # fp32 whatever the default dtype
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, tokens_ND: torch.Tensor) -> torch.Tensor:
        # in fp32, then back to the tokens' dtype: the average is not rounded to bf16 before it is subtracted
        tokens32_ND = tokens_ND.float()
        if not self.training:
            return (tokens32_ND - self.mean).to(tokens_ND.dtype)
        batch_D = tokens32_ND.mean(0)
        with torch.no_grad():
            self.updates += 1
            self.mean.lerp_(batch_D.detach(), torch.clamp(1.0 / self.updates, min=self.MOMENTUM))
        return (tokens32_ND - batch_D).to(tokens_ND.dtype)


class NVILAPreTrainedModel(PreTrainedModel):
    config_class = NVILAConfig
    config: NVILAConfig
    base_model_prefix = ""
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _no_split_modules = ["Qwen2DecoderLayer", "SiglipEncoderLayer"]
    _skip_keys_device_placement = ["cache"]
    # a running centring's average stays fp32 when the model loads in bf16 (transformers) or trains under DeepSpeed
    # bf16 (its default keep_in_fp32 pattern reads this attribute), as mixed precision keeps BatchNorm's statistics:
    # bf16's 8-bit mantissa spaces values near 8 by 0.06, so a batch mean within 0.3 of such an average would not
    # move it
    _keep_in_fp32_modules_strict = ["token_centre"]


class NVILAForConditionalGeneration(NVILAPreTrainedModel, GenerationMixin):
    """Vision tower features (select layer) -> Dynamic-S2 merge -> STC projector -> tokens replacing media markers."""

    def __init__(self, config: NVILAConfig):
        config.validate()
        super().__init__(config)
        self.vision_tower = SiglipVisionModel(config.vision_config)
        self.projector = Projector(config.projector, config.projector_in_channels, config.text_config.hidden_size)
        self.language_model = Qwen2ForCausalLM(config.text_config)
        if config.centering == "running":
            self.token_centre = RunningCentre(config.text_config.hidden_size)
        self.post_init()
        # greedy decoding stops at <|im_end|>; ids come from the LLM config (set by the presets / tokenizer)
        self.generation_config.eos_token_id = config.text_config.eos_token_id
        self.generation_config.pad_token_id = config.text_config.pad_token_id
        # media placeholders are inputs only: never generate them
        self.generation_config.suppress_tokens = [config.image_token_id, config.video_token_id]

    @classmethod
    def from_components(cls, config: NVILAConfig, vision_path: str | Path | None = None,
                        llm_path: str | Path | None = None) -> NVILAForConditionalGeneration:
        """Build from `config`, loading the vision tower and/or LLM from local pretrained directories. Under ZeRO-3
        (a registered DeepSpeed config) transformers builds and loads inside `deepspeed.zero.Init`, so no rank
        materialises the whole model first."""
        model = cls._from_config(config)
        if vision_path is not None:
            model.vision_tower = SiglipVisionModel.from_pretrained(vision_path)
            model.config.vision_config = model.vision_tower.config
        if llm_path is not None:
            model.language_model = Qwen2ForCausalLM.from_pretrained(llm_path)
            model.config.text_config = model.language_model.config
        model.config.validate()
        return model

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    # Vision -------------------------------------------------------------------------------------------------
    @property
    def vision_layers_used(self) -> int:
        """Encoder layers up to the feature layer (select -2 of 27 -> 26); later layers are never run."""
        select, total = self.config.vision_select_layer, self.config.vision_config.num_hidden_layers
        return total + 1 + select if select < 0 else select

    def unused_vision_parameters(self) -> list[str]:
        """Names of vision-tower parameters the features never depend on (layers past the feature layer, the
        post-LayerNorm and pooling head): kept so pretrained SigLIP checkpoints load unchanged, never trained."""
        used = self.vision_layers_used
        return [f"vision_tower.{n}" for n, _ in self.vision_tower.named_parameters()
                if not n.startswith(("embeddings.", *(f"encoder.layers.{i}." for i in range(used))))]

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tiles [N, 3, T, T] -> patch features [N, h, w, C] from the configured layer (SigLIP has no CLS).

        Runs the embeddings and only the encoder layers the feature layer needs, instead of the whole tower.
        """
        tower = self.vision_tower
        x_NPC = tower.embeddings(pixel_values.to(tower.dtype))
        for layer in tower.encoder.layers[: self.vision_layers_used]:
            x_NPC = layer(x_NPC, None)
        side = self.config.patches_per_side
        return x_NPC.reshape(x_NPC.shape[0], side, side, x_NPC.shape[-1])

    def encode_media(self, pixel_values: torch.Tensor, media_layout: torch.Tensor,
                     centre: bool = True) -> list[torch.Tensor]:
        """Projected tokens for each media item, in order: a list of [num_tokens_i, D], centred as the config says
        (`centre=False`: the projector's tokens as they are).

        The projector runs once on the tiles of all media: under ZeRO-3 every call of a module gathers its weights,
        so the number of calls must not depend on how many media a rank's micro-batch holds.
        """
        cfg = self.config
        feats_NhwC = self.vision_features(pixel_values)
        layout = media_layout.tolist()
        counts = [tiles_of(row, cfg) for row in layout]
        if sum(counts) != feats_NhwC.shape[0]:
            raise ValueError(f"media_layout accounts for {sum(counts)} tiles but pixel_values holds "
                             f"{feats_NhwC.shape[0]}")
        # One split, not a slice per item: a slice's backward writes a zero gradient the size of all tiles and adds
        # into it, once per item (this loop's forward + backward 1.41x faster on a tiny batch: bench/media_split.py).
        maps = [scale_maps(row, tiles_NhwC, cfg) for row, tiles_NhwC in zip(layout, feats_NhwC.split(counts),
                                                                             strict=True)]
        projected = self.projector(torch.cat(maps)).split([m.shape[0] for m in maps])
        outputs = []
        for (kind, rows, cols, _frames), proj_NhwD in zip(layout, projected, strict=True):
            if kind == KIND_S2_IMAGE:
                outputs.append(stitch(proj_NhwD, rows, cols).flatten(0, 1))
            elif kind == KIND_VIDEO:
                pooled_GTD = temporal_pool(proj_NhwD.flatten(1, 2), cfg.video_pool_size)
                outputs.append(pooled_GTD.flatten(0, 1))
            else:
                outputs.append(proj_NhwD.flatten(0, 2))
        if not centre:
            return outputs
        if cfg.centering == "item":
            return [tokens_TD - tokens_TD.mean(0, keepdim=True) for tokens_TD in outputs]
        if cfg.centering == "running":
            return list(self.token_centre(torch.cat(outputs)).split([t.shape[0] for t in outputs]))
        return outputs

    def idle_media_term(self, like: torch.Tensor) -> torch.Tensor:
        """A zero that runs the vision tower and projector on one blank tile. Added to a text-only training batch so
        that every rank runs (and, under ZeRO-3, gathers) the same modules every step, and every trainable
        parameter gets a (zero) gradient: otherwise a rank with a text-only micro-batch skips the all-gathers of
        the vision weights and the job hangs."""
        size = self.config.tile_size
        tile = torch.zeros((1, 3, size, size), device=like.device)
        feats = self.encode_media(tile, torch.tensor([[KIND_TILE_IMAGE, 1, 1, 0]]), centre=False)[0]
        return feats.sum().to(like.dtype) * 0.0

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
              media_layout: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with every media placeholder replaced by its projected visual token."""
        cfg = self.config
        media_mask_BL = (input_ids == cfg.image_token_id) | (input_ids == cfg.video_token_id)
        embeds_BLD = self.get_input_embeddings()(input_ids.masked_fill(media_mask_BL, 0))
        num_slots = int(media_mask_BL.sum())
        if pixel_values is None or media_layout is None or media_layout.numel() == 0:
            if num_slots:
                raise ValueError(f"input has {num_slots} media placeholder tokens but no pixel_values/media_layout")
            return embeds_BLD + self.idle_media_term(embeds_BLD) if self.training else embeds_BLD
        feats_ND = torch.cat(self.encode_media(pixel_values, media_layout), dim=0)
        if feats_ND.shape[0] != num_slots:
            raise ValueError(f"media gives {feats_ND.shape[0]} visual tokens but the text has {num_slots} "
                             "placeholders: the media markers and the media do not match")
        return embeds_BLD.masked_scatter(media_mask_BL.unsqueeze(-1), feats_ND.to(embeds_BLD.dtype))

    # Language -----------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        media_layout: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Causal LM forward. Packed rows: `position_ids` restarting per sample and `attention_mask=None` give
        block-diagonal causal attention (transformers detects the packing from the position ids); one packed row
        with `cu_seq_lens_q/k` (flash_attention_2, sdpa_varlen) builds no mask at all."""
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, pixel_values, media_layout)
        if labels is not None and self.training:
            return self.supervised_loss(inputs_embeds, attention_mask, position_ids, labels, **kwargs)
        if use_cache is None and (labels is not None or self.training):
            use_cache = False  # a training forward needs no cache, and packed-sequence masking requires none
        return self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=self.packed_mask(attention_mask, kwargs),
            position_ids=position_ids, cache=cache, labels=labels, use_cache=use_cache, logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def packed_mask(self, attention_mask: torch.Tensor | None, kwargs: dict) -> torch.Tensor | dict | None:
        """No mask for a packed row with varlen boundaries when the LLM's kernel reads them (flash-attn,
        sdpa_varlen): the mask transformers would build from the position ids is dense, [L, L] over the whole row.
        Other kernels (sdpa, eager) get that mask, which keeps the samples apart too."""
        text_config = self.config.text_config
        if (attention_mask is None and kwargs.get("cu_seq_lens_q") is not None
                and text_config._attn_implementation in VARLEN_KERNELS):
            return dict.fromkeys(text_config.layer_types)
        return attention_mask

    def supervised_loss(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None,
                        position_ids: torch.LongTensor | None, labels: torch.LongTensor,
                        num_items_in_batch: torch.Tensor | int | None = None, **kwargs) -> CausalLMOutputWithPast:
        """The training loss, with the LM head run on the supervised positions only.

        Only the answer tokens carry a target: a few of each sample's hundreds, most of which are visual tokens. The
        LLM's own loss projects every position onto the vocabulary and throws those logits away, which here costs
        about a tenth of a training step. Same loss (next-token cross-entropy, mean over targets or sum over
        `num_items_in_batch` under gradient accumulation) and gradients; `logits` holds the supervised rows
        [targets, vocab] in fp32. Evaluation mode returns every position's logits as before.
        """
        logits_TV, targets_T, supervised_BL = self.supervised_logits(inputs_embeds, attention_mask, position_ids,
                                                                     labels, **kwargs)
        loss = F.cross_entropy(logits_TV, targets_T, reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else supervised_BL.sum()
        if torch.is_tensor(count):
            count = count.to(loss.device)
        return CausalLMOutputWithPast(loss=loss / count, logits=logits_TV)

    def supervised_logits(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None,
                          position_ids: torch.LongTensor | None, labels: torch.LongTensor,
                          **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The LM head on the positions that predict a label, only: `(logits_TV in fp32, targets_T,
        supervised_BL)`, T the supervised positions in row-major order (position t predicts label t + 1)."""
        # the decoder and head as transformers names them, also when peft wraps the LLM (LoRA)
        decoder = self.language_model.get_decoder()
        attention_mask = self.packed_mask(attention_mask, kwargs)
        hidden_BLD = decoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=False, **kwargs).last_hidden_state
        targets_BL = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).to(hidden_BLD.device)  # t predicts t + 1
        supervised_BL = targets_BL != IGNORE_INDEX
        logits_TV = self.get_output_embeddings()(hidden_BLD[supervised_BL]).float()
        return logits_TV, targets_BL[supervised_BL], supervised_BL

    def prepare_inputs_for_generation(self, input_ids, is_first_iteration: bool | None = False, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(input_ids, is_first_iteration=is_first_iteration,
                                                             **kwargs)
        if not is_first_iteration and kwargs.get("use_cache", True):
            # after prefill the visual tokens live in the KV cache
            model_inputs.pop("pixel_values", None)
            model_inputs.pop("media_layout", None)
        return model_inputs


AutoConfig.register("nvila", NVILAConfig, exist_ok=True)
AutoModelForImageTextToText.register(NVILAConfig, NVILAForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(NVILAConfig, NVILAForConditionalGeneration, exist_ok=True)
