"""The reference tokenizer (in `llm/`): media tokens, the newline end token and the chat template, checked against
what our processor writes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from nvila_model.official import layout
from nvila_model.tokenizer import CHAT_TEMPLATE

# The reference's `qwen2` chat template (llava/model/language_model/chat_templates/qwen2.jinja) is ChatML with this
# default system prompt; a config.json `chat_template: qwen2` replaces the tokenizer's own template with it.
QWEN2_TEMPLATE_SYSTEM = "You are a helpful assistant"
_SYSTEM = re.compile(r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n<\|im_start\|>user\nQ<\|im_end\|>\n"
                     r"<\|im_start\|>assistant\n", re.DOTALL)


def load_official_tokenizer(llm_dir: Path, top: dict[str, Any]) -> PreTrainedTokenizerBase:
    """The tokenizer the reference builds: `llm/` as saved, with the qwen2 template when config.json names it."""
    if not (llm_dir / "tokenizer_config.json").is_file():
        raise ValueError(f"{llm_dir}: no tokenizer_config.json (the reference keeps the tokenizer in llm/)")
    tokenizer = AutoTokenizer.from_pretrained(str(llm_dir))
    template = top.get("chat_template")
    if template == "qwen2":
        tokenizer.chat_template = CHAT_TEMPLATE.replace("default_system", repr(QWEN2_TEMPLATE_SYSTEM))
    elif template is not None:
        raise ValueError(f"config.json chat_template={template!r}: only the tokenizer's own template or 'qwen2' "
                         "is implemented")
    return tokenizer


def system_prompt(tokenizer: PreTrainedTokenizerBase, where: str) -> str:
    """The default system prompt of a ChatML chat template; refuses a template our processor does not reproduce."""
    if not tokenizer.chat_template:
        raise ValueError(f"{where}: the tokenizer has no chat_template")
    one = [{"role": "user", "content": "Q"}]
    text = tokenizer.apply_chat_template(one, add_generation_prompt=True, tokenize=False)
    match = _SYSTEM.fullmatch(text)
    if match is None:
        raise ValueError(f"{where}: chat_template renders {text!r}, not ChatML with a default system turn")
    system = match.group(1)
    turns = [*one, {"role": "assistant", "content": "A"}, {"role": "user", "content": "R"}]
    expected = (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
                "A<|im_end|>\n<|im_start|>user\nR<|im_end|>\n<|im_start|>assistant\n")
    if tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False) != expected:
        raise ValueError(f"{where}: chat_template's multi-turn rendering differs from ChatML")
    return system


def media_token_ids(tokenizer: PreTrainedTokenizerBase, vocab_size: int, where: str,
                    tokens: tuple[str, str] = (layout.IMAGE_TOKEN, layout.VIDEO_TOKEN)) -> tuple[int, int]:
    """Ids of the image and video tokens; each must exist and have a row in the LLM's embedding."""
    vocab = tokenizer.get_vocab()
    for token in tokens:
        if token not in vocab:
            raise ValueError(f"{where}: tokenizer lacks the media token {token!r}")
        if vocab[token] >= vocab_size:
            raise ValueError(f"{where}: media token {token!r} has id {vocab[token]}, outside the LLM's "
                             f"{vocab_size} embedding rows")
    return vocab[tokens[0]], vocab[tokens[1]]


def newline_id(tokenizer: PreTrainedTokenizerBase, where: str) -> int:
    """The encoders' end token: the reference embeds tokenizer("\\n").input_ids (special tokens included)."""
    ids = tokenizer("\n").input_ids
    if len(ids) != 1:
        raise ValueError(f"{where}: tokenizer('\\n') gives {ids}; the reference's end-token embedding and ours "
                         "agree only for one token")
    return ids[0]


def add_official_tokens(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> PreTrainedTokenizerBase:
    """Make sure the reference finds its media and sentinel tokens (added as special tokens when absent)."""
    missing = [t for t in (layout.SENTINEL_TOKEN, layout.IMAGE_TOKEN, layout.VIDEO_TOKEN)
               if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    media_token_ids(tokenizer, vocab_size, "export tokenizer", (layout.IMAGE_TOKEN, layout.VIDEO_TOKEN))
    return tokenizer


def save_official_tokenizer(tokenizer: PreTrainedTokenizerBase, llm_dir: Path) -> None:
    """Save into `llm/`; the chat template also goes into tokenizer_config.json, where transformers 4.46 reads it."""
    tokenizer.save_pretrained(str(llm_dir))
    cfg_file = llm_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["chat_template"] = tokenizer.chat_template
    cfg_file.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
