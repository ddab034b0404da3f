"""W8A8 Linears for the vision tower: int8 per-output-channel weights, dynamic int8 activations, by backend.

Backends: `torch_ao` (torch.ao dynamic quantization on the x86/fbgemm int8 kernels: a real CPU speedup in eager
mode; the activation scale is computed dynamically per tensor), `torchao` (Int8DynamicActivationInt8WeightConfig:
per-token dynamic activations, int_mm kernels on CUDA; on CPU it runs but is only fast under torch.compile).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

from nvila_model.quant.config import W8A8_BACKENDS

INT8_SUFFIXES = ("w8a8_weight_int8", "w8a8_weight_scale", "w8a8_weight_zero_point", "w8a8_bias")


def resolve_backend(requested: str, device: torch.device | str) -> str:
    """The backend that `requested` means on `device`; a backend the hardware lacks is a clear `ValueError`."""
    if requested not in W8A8_BACKENDS:
        raise ValueError(f"W8A8 backend {requested!r} unknown; choose one of {W8A8_BACKENDS}")
    on_cuda = torch.device(device).type == "cuda"
    backend = requested if requested != "auto" else ("torchao" if on_cuda else "torch_ao")
    if backend == "torch_ao":
        if on_cuda:
            raise ValueError("W8A8 backend torch_ao has CPU kernels only; use backend torchao (or auto) on CUDA")
        if not {"x86", "fbgemm", "onednn", "qnnpack"} & set(torch.backends.quantized.supported_engines):
            raise ValueError("this CPU build of torch has no int8 quantized engine; use backend torchao")
    return backend


def activation_granularity(backend: str) -> str:
    """How the dynamic activation scale is taken by `backend` (recorded in meta.json)."""
    return "per_token" if backend == "torchao" else "per_tensor"


def target_linear_names(module: nn.Module, targets: list[str]) -> list[str]:
    """Qualified names (inside `module`) of the SigLIP encoder-layer Linears whose last name is in `targets`."""
    names = []
    for layer_name, layer in module.named_modules():
        if isinstance(layer, SiglipEncoderLayer):
            for sub_name, sub in layer.named_modules():
                if isinstance(sub, nn.Linear) and sub_name.rsplit(".", 1)[-1] in targets:
                    names.append(f"{layer_name}.{sub_name}")
    if not names:
        raise ValueError(f"no Linear named {targets} inside a SigLIP encoder layer of {type(module).__name__}")
    return names


@torch.no_grad()
def quantize_linears(module: nn.Module, names: list[str], backend: str) -> None:
    """Replace the named Linears of `module` in place by the backend's W8A8 Linears."""
    if backend == "torch_ao":
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        quantize_dynamic(module, {name: per_channel_dynamic_qconfig for name in names}, dtype=torch.qint8,
                         inplace=True)
    elif backend == "torchao":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        wanted = set(names)
        quantize_(module, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda _m, fqn: fqn in wanted)
    else:
        raise ValueError(f"W8A8 backend {backend!r} cannot quantize; resolve 'auto' with resolve_backend first")


def export_int8(module: nn.Module, names: list[str], prefix: str) -> dict[str, torch.Tensor]:
    """The torch_ao int8 weights, per-channel scales, zero points and fp32 biases as plain tensors (safetensors)."""
    tensors = {}
    for name in names:
        qlinear = module.get_submodule(name)
        qweight = qlinear.weight()
        key = f"{prefix}{name}."
        tensors[key + "w8a8_weight_int8"] = qweight.int_repr().contiguous()
        tensors[key + "w8a8_weight_scale"] = qweight.q_per_channel_scales().contiguous()
        tensors[key + "w8a8_weight_zero_point"] = qweight.q_per_channel_zero_points().contiguous()
        bias = qlinear.bias()
        if bias is not None:
            tensors[key + "w8a8_bias"] = bias.detach().contiguous()
    return tensors


def import_int8(module: nn.Module, names: list[str], prefix: str, tensors: dict[str, torch.Tensor]) -> None:
    """Rebuild the torch_ao W8A8 Linears of `module` from `export_int8`'s tensors (bit-identical weights)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    for name in names:
        key = f"{prefix}{name}."
        weight = tensors[key + "w8a8_weight_int8"]
        qweight = torch._make_per_channel_quantized_tensor(
            weight, tensors[key + "w8a8_weight_scale"].double(), tensors[key + "w8a8_weight_zero_point"].long(), 0)
        bias = tensors.get(key + "w8a8_bias")
        qlinear = DynamicQuantizedLinear(weight.shape[1], weight.shape[0], bias_=bias is not None, dtype=torch.qint8)
        qlinear.set_weight_bias(qweight, bias)
        parent_name, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, child, qlinear)


def is_w8a8_key(key: str) -> bool:
    """Whether a safetensors key was written by `export_int8`."""
    return key.rsplit(".", 1)[-1] in INT8_SUFFIXES
