"""`sdpa_varlen`: packed-row attention without a mask, for machines without flash-attn (CPUs, GPUs without the kernel).

A packed row holds several samples. On the SDPA path transformers keeps them apart with a dense block-diagonal
mask built from the position ids, and torch's SDPA kernels then compute every block of it: the masked blocks of
the other samples, and the upper triangle a causal kernel would skip. With long rows (Dynamic-S2 without token
compression) that is most of a training step. flash-attn's varlen kernel instead takes the sample boundaries
(`cu_seq_lens_q/k`), which transformers has no SDPA counterpart for; this is one: each sample is its own causal
SDPA call on its slice of the row, so no mask is built and no cross-sample block is computed. Without boundaries
(generation, padded batches, the vision tower) it is transformers' `sdpa` unchanged, masks included.

Both kernels take the one layout `PackingCollator` gives: a micro-batch in one row, with `cu_seq_lens_q/k`.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "sdpa_varlen"
# the LLM kernels that take a packed row's boundaries (`cu_seq_lens_q/k`) and need no mask
VARLEN_KERNELS = frozenset({NAME, "flash_attention_2", "flash_attention_3", "flash_attention_4"})


def sdpa_varlen_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, cu_seq_lens_q: torch.Tensor | None = None,
                          cu_seq_lens_k: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: query [B, H, L, D] -> ([B, L, H, D], None)."""
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if query.shape[0] != 1 or attention_mask is not None or not torch.equal(cu_seq_lens_q, cu_seq_lens_k):
        raise ValueError("sdpa_varlen takes one packed row with equal query/key boundaries and no mask "
                         f"(got {query.shape[0]} rows, mask {attention_mask is not None})")
    bounds = cu_seq_lens_q.tolist()
    outputs = [sdpa_attention_forward(module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], None,
                                      is_causal=True, **kwargs)[0]
               for s, e in zip(bounds[:-1], bounds[1:], strict=True) if e > s]
    return torch.cat(outputs, dim=1), None


AttentionInterface.register(NAME, sdpa_varlen_attention)
# masks as `sdpa` builds them, for the calls without boundaries; a packed call skips mask building (modeling.py)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
