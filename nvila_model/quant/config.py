"""Config dataclasses of the quantize and infer stages (`params.yaml` key `quantize`)."""

from __future__ import annotations

from dataclasses import field

from nvila_model.params import DeviceSetting, config

W8A8_BACKENDS = ("auto", "torch_ao", "torchao")
VISION_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


@config
class VisionW8A8Config:
    """Vision tower W8A8: SmoothQuant folded into LayerNorm -> QKV and LayerNorm -> fc1, then int8 Linears."""

    enabled: bool = True
    alpha: float = 0.5  # migration strength: 0 keeps all difficulty on activations, 1 moves it all to weights
    smooth: bool = True
    num_calib_samples: int = 32  # training samples (images and videos) whose tiles calibrate the smoothing
    # auto: torchao per-token int8 on CUDA; on CPU torch.ao dynamic int8 (fbgemm/x86 kernels, per-tensor dynamic
    # activation scale, the only CPU int8 path that is faster than fp32 in eager mode). torchao forces per-token.
    backend: str = "auto"
    targets: list[str] = field(default_factory=lambda: list(VISION_TARGETS))

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"quantize.vision.alpha must lie in [0, 1], got {self.alpha}")
        if self.backend not in W8A8_BACKENDS:
            raise ValueError(f"quantize.vision.backend {self.backend!r} unknown; choose one of {W8A8_BACKENDS}")
        unknown = sorted(set(self.targets) - set(VISION_TARGETS))
        if unknown:
            raise ValueError(f"quantize.vision.targets: unknown layer names {unknown}; allowed: {VISION_TARGETS}")
        if self.num_calib_samples < 1:
            raise ValueError("quantize.vision.num_calib_samples must be at least 1")


@config
class LLMW4A16Config:
    """LLM W4A16 with AWQ (autoawq): 4-bit weights in groups with a zero point, fp16 activations."""

    enabled: bool = True
    w_bit: int = 4
    group_size: int = 128
    zero_point: bool = True
    num_calib_samples: int = 128  # pipeline texts fed to AWQ
    calib_seq_len: int = 512  # AWQ calibration block length (lowered to the text available when short)
    apply_clip: str = "auto"  # auto | true | false; auto clips when every output size is a multiple of 64

    def __post_init__(self) -> None:
        if self.w_bit != 4:
            raise ValueError(f"quantize.llm.w_bit: autoawq GEMM kernels pack 4-bit weights only, got {self.w_bit}")
        if self.group_size not in (32, 64, 128):
            raise ValueError(f"quantize.llm.group_size must be 32, 64 or 128, got {self.group_size}")
        if str(self.apply_clip).lower() not in ("auto", "true", "false"):
            raise ValueError(f"quantize.llm.apply_clip must be auto, true or false, got {self.apply_clip!r}")
        if self.num_calib_samples < 1 or self.calib_seq_len < 8:
            raise ValueError("quantize.llm needs num_calib_samples >= 1 and calib_seq_len >= 8")


@config
class QuantizeConfig:
    """The `quantize` stage: what to quantize and how (the checkpoint, calibration data and output are options)."""

    seed: int = 0
    num_threads: int | None = None  # None: torch's setting (every core, or a pipeline run's share of them)
    # auto (cuda when available: the torchao W8A8 backend, AWQ on the GPU) | cpu | cuda[:N]
    device: DeviceSetting = "auto"
    vision: VisionW8A8Config = field(default_factory=VisionW8A8Config)
    llm: LLMW4A16Config = field(default_factory=LLMW4A16Config)

    def __post_init__(self) -> None:
        if not (self.vision.enabled or self.llm.enabled):
            raise ValueError("quantize: both vision.enabled and llm.enabled are false; nothing to quantize")
