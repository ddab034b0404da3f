"""Tokenizer: a byte-level BPE trained on the project's own text, wrapped as a fast tokenizer with a ChatML template.

No hub tokenizer can be downloaded here, so one is trained in milliseconds with the `tokenizers` library. A user's
own tokenizer directory loads through the same `load_tokenizer` call, as long as it has the special tokens below.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

# Fixed order so the ids are stable across trainings: pad 0, <|im_start|> 1, <|im_end|> 2, <image> 3, <video> 4.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
IMAGE_TOKEN, VIDEO_TOKEN = "<image>", "<video>"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, system_prompt: str = "You are a helpful assistant.",
                    ) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of at most `vocab_size` entries on `texts` (plus the chat scaffolding)."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} is below the 256 byte tokens plus {len(SPECIAL_TOKENS)} specials")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    scaffold = [system_prompt, "system\n", "user\n", "assistant\n"]
    bpe.train_from_iterator([*scaffold, *texts], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=[IMAGE_TOKEN, VIDEO_TOKEN],
    )
    tokenizer.chat_template = CHAT_TEMPLATE.replace("default_system", repr(system_prompt))
    return tokenizer


def load_tokenizer(path: str | Path, media_tokens: tuple[str, str] = (IMAGE_TOKEN, VIDEO_TOKEN),
                   ) -> PreTrainedTokenizerBase:
    """Load a tokenizer directory (ours or a user's) and check it has the tokens NVILA needs.

    `media_tokens`: the image and video placeholder strings (ours by default; an imported official tokenizer has
    `<image>` and `<vila/video>`)."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: tokenizer directory not found")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    check_tokenizer(tokenizer, str(path), media_tokens)
    return tokenizer


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, where: str = "tokenizer",
                    media_tokens: tuple[str, str] = (IMAGE_TOKEN, VIDEO_TOKEN)) -> None:
    vocab = tokenizer.get_vocab()
    missing = [t for t in ("<|im_start|>", "<|im_end|>", *media_tokens) if t not in vocab]
    if missing:
        raise ValueError(f"{where}: missing special tokens {missing} (NVILA needs ChatML and media markers)")
