"""NVILAConfig: SigLIP vision tower + STC projector + Qwen2 LLM, with Dynamic-S2 and video settings."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig, Qwen2Config, SiglipVisionConfig

IGNORE_INDEX = -100  # the label of a position without a target (transformers' convention)

# Projector name -> spatial-to-channel factor (tokens per tile shrink by factor**2).
# `mlp_downsample_2x2_fix` is the reference's second name for the same 2x2 block (identical computation); it is kept
# as its own kind so an imported checkpoint exports under the name it came with.
PROJECTOR_FACTORS = {"none": 1, "mlp_downsample": 2, "mlp_downsample_2x2_fix": 2, "mlp_downsample_3x3_fix": 3}
GRID_MODES = ("search", "round")
# Video frame picks: "centre" of equal segments (ours), "linspace" = round(linspace(0, n-1, k)) (the reference's).
FRAME_SAMPLING = ("centre", "linspace")
# `center_visual_tokens`: "none"; "item" (each media item's own mean token); "running" (the mean over the training
# batch, and at inference a running average of those means). False and True are the first two, as older configs
# spell them.
CENTERING = ("none", "item", "running")


class NVILAConfig(PretrainedConfig):
    """Configuration of `NVILAForConditionalGeneration`.

    `s2_scales` are square input sizes; every scale but the largest is squared and tiled, the largest keeps the
    aspect ratio (grid chosen by `s2_grid_mode`: "search" is the repository's aspect-ratio search over grids with
    `s2_min_tiles`..`s2_max_tiles` tiles, "round" is the paper's reading, each side rounded to a multiple of the tile).
    `s2_tile_images=False` keeps an S2-width projector but sends every image as one tile (each scale then repeats
    that tile's map), as the reference does with `image_aspect_ratio: resize` on a dynamic-S2 model.
    Video: `num_video_frames` frames picked by `video_frame_sampling`, one tile each, projected tokens averaged over
    groups of `video_pool_size` consecutive frames.
    `image_token` / `video_token` are the tokenizer's strings for the media placeholders (ids `image_token_id` /
    `video_token_id`); an imported official checkpoint keeps its own (`<image>`, `<vila/video>`).
    `center_visual_tokens` subtracts a mean projected token from the visual tokens before the LLM: "none" (False)
    for the paper's sizes and released checkpoints; "item" (True), each media item's own mean, for the presets
    trained from scratch (`tiny`, `small`). There a picture of flat background is nearly one token repeated (99% of
    a fresh model's token norm is the mean token shared by every picture), training grows that shared part, and
    after the LLM's RMSNorm the part that tells pictures apart is too small to learn from: the `text` task stayed
    at chance even on 1500 text-only records (docs/FRONTIER.md: What the visual tokens carry). "running" subtracts
    the mean over the training micro-batch's visual tokens in training and a running average of it at inference
    (the mean half of a BatchNorm): each picture keeps its own mean, and a fixed subtraction folds into the
    projector's last bias, so such a model exports to the released layout.
    """

    model_type = "nvila"
    sub_configs = {"vision_config": SiglipVisionConfig, "text_config": Qwen2Config}

    def __init__(
        self,
        vision_config: dict | SiglipVisionConfig | None = None,
        text_config: dict | Qwen2Config | None = None,
        projector: str = "mlp_downsample",
        vision_select_layer: int = -2,
        dynamic_s2: bool = True,
        s2_scales: list[int] | None = None,
        s2_grid_mode: str = "search",
        s2_min_tiles: int | None = None,
        s2_max_tiles: int = 12,
        num_video_frames: int = 8,
        video_pool_size: int = 1,
        image_token_id: int = 3,
        video_token_id: int = 4,
        s2_tile_images: bool = True,
        video_frame_sampling: str = "centre",
        image_token: str = "<image>",
        video_token: str = "<video>",
        image_mean: float = 0.5,
        image_std: float = 0.5,
        system_prompt: str = "You are a helpful assistant.",
        max_seq_length: int = 8192,
        initializer_range: float = 0.02,
        center_visual_tokens: bool | str = False,
        **kwargs: Any,
    ):
        if isinstance(vision_config, dict):
            vision_config = SiglipVisionConfig(**vision_config)
        if isinstance(text_config, dict):
            text_config = Qwen2Config(**text_config)
        self.vision_config = vision_config if vision_config is not None else SiglipVisionConfig()
        self.text_config = text_config if text_config is not None else Qwen2Config()
        self.projector = projector
        self.vision_select_layer = vision_select_layer
        self.dynamic_s2 = dynamic_s2
        tile = self.vision_config.image_size
        self.s2_scales = list(s2_scales) if s2_scales is not None else [tile, 2 * tile, 3 * tile]
        self.s2_grid_mode = s2_grid_mode
        # The repository's lower bound is the largest scale's square tile count ((1344/448)^2 = 9).
        self.s2_min_tiles = s2_min_tiles if s2_min_tiles is not None else (self.s2_scales[-1] // tile) ** 2
        self.s2_max_tiles = s2_max_tiles
        self.num_video_frames = num_video_frames
        self.video_pool_size = video_pool_size
        self.image_token_id = image_token_id
        self.video_token_id = video_token_id
        self.s2_tile_images = s2_tile_images
        self.video_frame_sampling = video_frame_sampling
        self.image_token = image_token
        self.video_token = video_token
        self.image_mean = image_mean
        self.image_std = image_std
        self.system_prompt = system_prompt
        self.max_seq_length = max_seq_length
        self.initializer_range = initializer_range
        self.center_visual_tokens = center_visual_tokens
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    # Derived sizes --------------------------------------------------------------------------------------------
    @property
    def tile_size(self) -> int:
        return self.vision_config.image_size

    @property
    def patches_per_side(self) -> int:
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def stc_factor(self) -> int:
        return PROJECTOR_FACTORS[self.projector]

    @property
    def tokens_per_side(self) -> int:
        """Projected tokens per tile side (odd sides are zero-padded up to a multiple of the STC factor)."""
        return -(-self.patches_per_side // self.stc_factor)

    @property
    def tokens_per_tile(self) -> int:
        return self.tokens_per_side**2

    @property
    def centering(self) -> str:
        """`center_visual_tokens` as one of CENTERING (older configs hold a bool)."""
        mode = self.center_visual_tokens
        if isinstance(mode, bool):
            return "item" if mode else "none"
        return mode

    @property
    def num_scales(self) -> int:
        return len(self.s2_scales) if self.dynamic_s2 else 1

    @property
    def projector_in_channels(self) -> int:
        return self.vision_config.hidden_size * self.num_scales

    def validate(self) -> None:
        """Check the configuration before allocating anything; raises `ValueError` naming the problem."""
        v, t = self.vision_config, self.text_config
        if self.projector not in PROJECTOR_FACTORS:
            raise ValueError(f"projector {self.projector!r} unknown; choose one of {sorted(PROJECTOR_FACTORS)}")
        if v.image_size % v.patch_size:
            raise ValueError(f"vision image_size {v.image_size} is not a multiple of patch_size {v.patch_size}")
        if v.hidden_size % v.num_attention_heads:
            raise ValueError(f"vision hidden_size {v.hidden_size} not divisible by {v.num_attention_heads} heads")
        if t.hidden_size % t.num_attention_heads or t.num_attention_heads % t.num_key_value_heads:
            raise ValueError("LLM hidden_size must divide by the heads, and heads by the key/value heads")
        if not -v.num_hidden_layers <= self.vision_select_layer <= v.num_hidden_layers:
            raise ValueError(f"vision_select_layer {self.vision_select_layer} outside the {v.num_hidden_layers} layers")
        if self.dynamic_s2:
            scales = self.s2_scales
            if sorted(scales) != scales or any(s % self.tile_size for s in scales) or scales[0] != self.tile_size:
                raise ValueError(f"s2_scales {scales} must ascend, start at the tile size {self.tile_size}, "
                                 "and be multiples of it")
            if self.s2_grid_mode not in GRID_MODES:
                raise ValueError(f"s2_grid_mode {self.s2_grid_mode!r} unknown; choose one of {GRID_MODES}")
            if not 1 <= self.s2_min_tiles <= self.s2_max_tiles:
                raise ValueError(f"need 1 <= s2_min_tiles ({self.s2_min_tiles}) <= s2_max_tiles ({self.s2_max_tiles})")
        if self.centering not in CENTERING:
            raise ValueError(f"center_visual_tokens {self.center_visual_tokens!r} unknown; choose one of {CENTERING}")
        if self.video_frame_sampling not in FRAME_SAMPLING:
            raise ValueError(f"video_frame_sampling {self.video_frame_sampling!r} unknown; "
                             f"choose one of {FRAME_SAMPLING}")
        if self.image_token == self.video_token or self.image_token_id == self.video_token_id:
            raise ValueError("image and video placeholder tokens must differ")
        if self.num_video_frames % self.video_pool_size:
            raise ValueError(f"num_video_frames {self.num_video_frames} is not divisible by video_pool_size "
                             f"{self.video_pool_size}")
        if max(self.image_token_id, self.video_token_id) >= t.vocab_size:
            raise ValueError("image/video token ids must be inside the LLM vocabulary")
