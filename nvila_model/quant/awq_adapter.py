"""The one place that knows autoawq 0.2.9: LLM W4A16 quantization (AWQ) of a Qwen2 LM and its reloading.

autoawq is archived upstream; its quirks on our CPUs, all handled here:
- it picks its GEMM kernel from process-wide flags (the CUDA extension `awq_ext`, else Triton whenever triton imports,
  else dequantize + matmul), not from the tensors' device, so CPU tensors on a host with CUDA would reach the GPU
  kernels: `use_kernels_for(device)` sets the flags for the device the model runs on (on a CPU: dequantize and
  matmul in fp16, no speedup, 4-bit weights in memory). One process runs its AWQ models on one kind of device;
- calibration texts longer than `max_calib_seq_len` are silently dropped and too few tokens make zero blocks:
  we cut the pipeline's token stream into blocks of exactly the calibration length ourselves;
- its clip search asserts out_features % 64 == 0: clipping is switched off for tiny models;
- `from_quantized` picks IPEX on CPU and needs a device map: we rebuild the WQLinear layers with
  `_load_quantized_modules(use_ipex=False)` and load the state dict ourselves.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

AWQ_VERSION = "gemm"


_GPU_KERNELS: dict[str, Any] = {}  # autoawq's own kernel flags as imported, restored for CUDA devices


def _awq() -> Any:
    """Import autoawq lazily (its import prints a deprecation notice); remember its GPU kernel flags."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import awq.modules.linear.gemm as awq_gemm
        from awq.models.qwen2 import Qwen2AWQForCausalLM
    if not _GPU_KERNELS:
        _GPU_KERNELS.update(awq_ext=awq_gemm.awq_ext, TRITON_AVAILABLE=awq_gemm.TRITON_AVAILABLE)
    return Qwen2AWQForCausalLM


def use_kernels_for(device: torch.device | str) -> str:
    """Point WQLinear_GEMM at the kernels of `device` (process-wide, see the module docstring); returns which."""
    _awq()
    import awq.modules.linear.gemm as awq_gemm

    if torch.device(device).type == "cpu":
        awq_gemm.awq_ext, awq_gemm.TRITON_AVAILABLE = None, False
        return "dequantize+matmul"
    awq_gemm.awq_ext, awq_gemm.TRITON_AVAILABLE = _GPU_KERNELS["awq_ext"], _GPU_KERNELS["TRITON_AVAILABLE"]
    return "awq_ext" if awq_gemm.awq_ext is not None else "triton" if awq_gemm.TRITON_AVAILABLE else "dequantize+matmul"


def awq_quant_config(w_bit: int, group_size: int, zero_point: bool) -> dict[str, Any]:
    """autoawq's quant_config dict (GEMM kernels: the ones with a CPU fallback)."""
    return {"zero_point": zero_point, "q_group_size": group_size, "w_bit": w_bit, "version": AWQ_VERSION.upper()}


def decoder_linears(lm: nn.Module) -> dict[str, nn.Linear]:
    """Every Linear inside the LM's decoder layers (what AWQ replaces; embeddings and lm_head stay)."""
    return {f"model.layers.{i}.{name}": mod for i, layer in enumerate(lm.model.layers)
            for name, mod in layer.named_modules() if isinstance(mod, nn.Linear)}


def check_quantizable(lm: nn.Module, group_size: int) -> None:
    """A clear `ValueError` when the LM is not a Qwen2 LM or a layer does not split into groups."""
    if type(lm).__name__ != "Qwen2ForCausalLM":
        raise ValueError(f"AWQ adapter supports Qwen2ForCausalLM, got {type(lm).__name__}")
    bad = {name: lin.in_features for name, lin in decoder_linears(lm).items() if lin.in_features % group_size}
    if bad:
        raise ValueError(f"quantize.llm.group_size {group_size} does not divide the input size of {bad}; "
                         "use a smaller group size (32 for the tiny preset)")


def clip_allowed(lm: nn.Module, apply_clip: str) -> bool:
    """Resolve apply_clip auto/true/false; autoawq's clip search asserts out_features % 64 == 0."""
    fits = all(lin.out_features % 64 == 0 for lin in decoder_linears(lm).values())
    choice = str(apply_clip).lower()
    if choice == "true" and not fits:
        raise ValueError("quantize.llm.apply_clip true needs every LLM layer's output size to be a multiple of 64")
    return fits if choice == "auto" else choice == "true"


def calibration_blocks(token_lists: list[list[int]], num_samples: int, seq_len: int) -> list[list[int]]:
    """The first `num_samples` texts' tokens as one stream, cut into blocks of `seq_len` (shorter if scarce)."""
    stream = [tok for tokens in token_lists[:num_samples] for tok in tokens]
    if len(stream) < 8:
        raise ValueError(f"AWQ calibration needs at least 8 tokens of text, got {len(stream)}")
    block = min(seq_len, len(stream))
    return [stream[i:i + block] for i in range(0, len(stream) - block + 1, block)]


def quantize_lm(lm: nn.Module, token_lists: list[list[int]], *, w_bit: int, group_size: int, zero_point: bool,
                num_calib_samples: int, calib_seq_len: int, apply_clip: str) -> dict[str, Any]:
    """Run AWQ on `lm` in place (its decoder Linears become WQLinear_GEMM); returns what was done, for meta.json.

    autoawq calibrates on its best device (the GPU when there is one) and leaves the layers on `lm`'s device."""
    check_quantizable(lm, group_size)
    wrapper_cls = _awq()
    kernels = use_kernels_for(next(lm.parameters()).device)
    from awq.models._config import AwqConfig

    blocks = calibration_blocks(token_lists, num_calib_samples, calib_seq_len)
    qcfg = awq_quant_config(w_bit, group_size, zero_point)
    clip = clip_allowed(lm, apply_clip)
    names = sorted(decoder_linears(lm))
    wrapper = wrapper_cls(lm, "qwen2", is_quantized=False, config=lm.config, quant_config=AwqConfig.from_dict(qcfg),
                          processor=None)
    lm.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper.quantize(None, qcfg, calib_data=blocks, max_calib_samples=len(blocks),
                         max_calib_seq_len=len(blocks[0]), apply_clip=clip)
    return {"method": "awq", "library": "autoawq", "kernel": "WQLinear_GEMM", "kernels": kernels, "w_bit": w_bit,
            "group_size": group_size, "zero_point": zero_point, "apply_clip": clip, "activations": "fp16",
            "calib_blocks": len(blocks), "calib_block_len": len(blocks[0]), "quantized_layers": names}


def prepare_for_loading(lm: nn.Module, awq_meta: dict[str, Any], device: torch.device | str = "cpu") -> str:
    """Swap the LM's decoder Linears for empty WQLinear_GEMM layers that a saved state dict then fills, with the
    kernels of `device` selected; returns which kernels."""
    wrapper_cls = _awq()
    kernels = use_kernels_for(device)
    from awq.models._config import AwqConfig

    qcfg = AwqConfig.from_dict(awq_quant_config(awq_meta["w_bit"], awq_meta["group_size"], awq_meta["zero_point"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper_cls._load_quantized_modules(wrapper_cls, lm, qcfg, qcfg.version, use_exllama=False,
                                            use_exllama_v2=False, use_ipex=False)
    return kernels


def is_awq_linear(module: nn.Module) -> bool:
    """Whether `module` is one of autoawq's quantized Linears."""
    return type(module).__name__.startswith("WQLinear")
