"""NVILAProcessor: LLaVA conversations + images/video -> input ids, labels, tiles and media layout for one sample."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from nvila_model.config import IGNORE_INDEX, NVILAConfig
from nvila_model.media_tokens import image_grid, num_image_tokens, num_video_tokens, tiles_image
from nvila_model.modeling import KIND_S2_IMAGE, KIND_TILE_IMAGE, KIND_VIDEO
from nvila_model.tokenizer import IMAGE_TOKEN, VIDEO_TOKEN, check_tokenizer, load_tokenizer
from nvila_model.video import frame_indices

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_MARKER = re.compile(r"\n?(<image>|<video>)\n?")
MEMO_SIZE = 65536  # entries each of a processor's memos keeps (first come, first kept)


class NVILAProcessor:
    """Image/video preprocessing (Dynamic-S2 tiling, uniform frames) plus the tokenizer and label masking."""

    def __init__(self, tokenizer, config: NVILAConfig):
        check_tokenizer(tokenizer, media_tokens=(config.image_token, config.video_token))
        self.tokenizer = tokenizer
        self.config = config
        ids = tokenizer.convert_tokens_to_ids([config.image_token, config.video_token])
        if ids != [config.image_token_id, config.video_token_id]:
            raise ValueError(f"tokenizer media token ids {ids} differ from the model config's "
                             f"{[config.image_token_id, config.video_token_id]}")
        newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
        if len(newline) != 1:
            raise ValueError("tokenizer must encode '\\n' as a single token")
        self.newline_id = newline[0]
        self.pad_id = tokenizer.pad_token_id
        # Memos of a fixed processor (its tokenizer and config do not change once built): a corpus repeats the chat
        # template's pieces, its questions and answers, and its image sizes, and both the tokenizer call and
        # transformers' config attribute access are slow next to the pixels: the memos take a quarter off encoding a
        # sample on the tiny preset (0.91 against 1.21 ms). Plain dicts, so a processor still pickles (DataLoader
        # workers, Ray).
        self._token_memo: dict[str, tuple[int, ...]] = {}
        self._size_memo: dict[tuple[Any, ...], Any] = {}  # (what, width, height, ...) -> grid or token count
        self._tile_size = config.tile_size
        self._mean, self._std = config.image_mean, config.image_std

    # Persistence ----------------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(path))
        (path / "processor_config.json").write_text(json.dumps(self.config.to_dict(), indent=2, default=str))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> NVILAProcessor:
        path = Path(path)
        cfg_file = path / "processor_config.json"
        if not cfg_file.is_file():
            raise ValueError(f"{path}: not an NVILA processor directory (no processor_config.json)")
        config = NVILAConfig.from_dict(json.loads(cfg_file.read_text()))
        return cls(load_tokenizer(path, (config.image_token, config.video_token)), config)

    # Token counts without running the model -----------------------------------------------------------------
    def _by_size(self, compute: Callable[..., Any], *key: Any) -> Any:
        found = self._size_memo.get((compute, *key))
        if found is None:
            found = compute(self.config, *key)
            if len(self._size_memo) < MEMO_SIZE:
                self._size_memo[compute, *key] = found
        return found

    def image_grid(self, width: int, height: int) -> tuple[int, int]:
        return self._by_size(image_grid, width, height)

    def num_image_tokens(self, width: int, height: int, single_image: bool = True) -> int:
        """Visual tokens for one image (excluding its trailing newline)."""
        return self._by_size(num_image_tokens, width, height, single_image)

    def num_video_tokens(self, frames: int) -> int:
        """Visual tokens for a video of `frames` sampled frames (excluding the newlines after each group)."""
        return num_video_tokens(self.config, frames)

    def tiles_image(self, single_image: bool) -> bool:
        """Whether an image goes through Dynamic-S2 tiling (only a sample's one image, and only if configured)."""
        return tiles_image(self.config, single_image)

    def video_frame_indices(self, total_frames: int) -> list[int]:
        return frame_indices(total_frames, self.config.num_video_frames, self.config.video_frame_sampling)

    # Pixels -----------------------------------------------------------------------------------------------
    def _to_tensor(self, img: Image.Image) -> torch.Tensor:
        x_HWC = np.asarray(img, dtype=np.float32) / 255.0
        x_HWC = (x_HWC - self._mean) / self._std
        return torch.from_numpy(x_HWC).permute(2, 0, 1)

    def _tiles(self, img: Image.Image, cols: int, rows: int) -> torch.Tensor:
        t = self._tile_size
        x_CHW = self._to_tensor(img.resize((cols * t, rows * t), Image.Resampling.BICUBIC))
        return x_CHW.reshape(3, rows, t, cols, t).permute(1, 3, 0, 2, 4).reshape(rows * cols, 3, t, t)

    def preprocess_image(self, img: Image.Image, single_image: bool) -> tuple[torch.Tensor, list[int]]:
        """One image -> (tiles [n, 3, T, T], media_layout row). Non-RGB modes are converted to RGB."""
        if img.width <= 0 or img.height <= 0:
            raise ValueError(f"image has zero size ({img.width}x{img.height})")
        if img.mode != "RGB":
            img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "LA") else img.convert("RGB")
        c = self.config
        if not self.tiles_image(single_image):
            return self._tiles(img, 1, 1), [KIND_TILE_IMAGE, 1, 1, 0]
        cols, rows = self.image_grid(img.width, img.height)
        square = [self._tiles(img, s // c.tile_size, s // c.tile_size) for s in c.s2_scales[:-1]]
        return torch.cat([*square, self._tiles(img, cols, rows)]), [KIND_S2_IMAGE, rows, cols, 0]

    def preprocess_video(self, frames_FHWC: np.ndarray) -> tuple[torch.Tensor, list[int]]:
        """Sampled frames uint8 [F, H, W, 3] -> (one tile per frame [F, 3, T, T], media_layout row)."""
        frames_FHWC = np.asarray(frames_FHWC)
        if frames_FHWC.ndim != 4 or frames_FHWC.shape[-1] != 3 or frames_FHWC.shape[0] == 0:
            raise ValueError(f"video frames must be a non-empty uint8 array [F, H, W, 3], got {frames_FHWC.shape}")
        num = frames_FHWC.shape[0]
        self.num_video_tokens(num)  # raises when the frame count does not divide by the pool size
        tiles = [self._tiles(Image.fromarray(f), 1, 1) for f in frames_FHWC]
        return torch.cat(tiles), [KIND_VIDEO, 1, 1, num]

    # Text -------------------------------------------------------------------------------------------------
    def _ids(self, text: str) -> tuple[int, ...]:
        ids = self._token_memo.get(text)
        if ids is None:
            ids = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else ()
            if len(self._token_memo) < MEMO_SIZE:
                self._token_memo[text] = ids
        return ids

    def encode(self, conversations: list[dict[str, str]], images: list[Image.Image] | None = None,
               video: np.ndarray | None = None, add_generation_prompt: bool = False) -> dict[str, torch.Tensor]:
        """One sample -> input_ids, labels, pixel_values, media_layout (see ARCHITECTURE.md).

        All media move to the start of the first user turn. The number of `<image>` markers must equal the number of
        images (and `<video>` markers the videos); a sample with media but no markers gets them prepended.
        """
        images = list(images or [])
        turns = _normalise_turns(conversations)
        n_img = sum(t[1].count(IMAGE_TOKEN) for t in turns)
        n_vid = sum(t[1].count(VIDEO_TOKEN) for t in turns)
        n_video_given = 0 if video is None else 1
        if (n_img or n_vid) and (n_img != len(images) or n_vid != n_video_given):
            raise ValueError(f"conversation has {n_img} <image> and {n_vid} <video> markers but {len(images)} "
                             f"images and {n_video_given} videos were given")
        media_ids, tiles, layout = self._media_block(images, video)
        ids: list[int] = []
        labels: list[int] = []

        def add(piece: Sequence[int], supervised: bool) -> None:
            ids.extend(piece)
            labels.extend(piece if supervised else [IGNORE_INDEX] * len(piece))

        if turns[0][0] != "system":
            turns.insert(0, ("system", self.config.system_prompt))
        media_done = False
        for role, text in turns:
            text = _MARKER.sub("", text).strip() if role == "user" else text
            if role == "assistant":
                add(self._ids("<|im_start|>assistant\n"), False)
                add(self._ids(text + "<|im_end|>"), True)
                add(self._ids("\n"), False)
                continue
            add(self._ids(f"<|im_start|>{role}\n"), False)
            if role == "user" and not media_done:
                add(media_ids, False)
                media_done = True
            add(self._ids(f"{text}<|im_end|>\n"), False)
        if add_generation_prompt:
            add(self._ids("<|im_start|>assistant\n"), False)
        if len(ids) > self.config.max_seq_length:
            raise ValueError(f"sample is {len(ids)} tokens, over max_seq_length {self.config.max_seq_length}")
        t = self.config.tile_size
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "pixel_values": torch.cat(tiles) if tiles else torch.zeros(0, 3, t, t),
            "media_layout": torch.tensor(layout, dtype=torch.long).reshape(-1, 4),
        }

    def _media_block(self, images: list[Image.Image], video: np.ndarray | None):
        """Placeholder ids (each image, and each frame group, followed by a newline), tiles and layout rows."""
        ids, tiles, layout = [], [], []
        single = len(images) == 1 and video is None
        for img in images:
            t, row = self.preprocess_image(img, single_image=single)
            tiles.append(t)
            layout.append(row)
            n = self.num_image_tokens(img.width, img.height, single) if row[0] == KIND_S2_IMAGE else \
                self.config.tokens_per_tile
            ids += [self.config.image_token_id] * n + [self.newline_id]
        if video is not None:
            t, row = self.preprocess_video(video)
            tiles.append(t)
            layout.append(row)
            for _ in range(row[3] // self.config.video_pool_size):
                ids += [self.config.video_token_id] * self.config.tokens_per_tile + [self.newline_id]
        return ids, tiles, layout

    def encode_prompt(self, question: str, images: list[Image.Image] | None = None,
                      video: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """A single user question ready for `generate()` (ends with the assistant prefix)."""
        return self.encode([{"from": "human", "value": question}], images, video, add_generation_prompt=True)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def pad(self, features: list[dict[str, torch.Tensor]], padding_side: str = "right") -> dict[str, Any]:
        """Batch samples: ids padded (pad id), labels padded with -100, attention mask, media concatenated."""
        longest = max(f["input_ids"].shape[0] for f in features)
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")

        def fill(x: torch.Tensor, value: int) -> torch.Tensor:
            pad = x.new_full((longest - x.shape[0],), value)
            return torch.cat([x, pad] if padding_side == "right" else [pad, x])

        for f in features:
            batch["input_ids"].append(fill(f["input_ids"], self.pad_id))
            batch["attention_mask"].append(fill(torch.ones_like(f["input_ids"]), 0))
            if "labels" in f:
                batch["labels"].append(fill(f["labels"], IGNORE_INDEX))
        out: dict[str, Any] = {k: torch.stack(v) for k, v in batch.items() if v}
        out["pixel_values"] = torch.cat([f["pixel_values"] for f in features])
        out["media_layout"] = torch.cat([f["media_layout"] for f in features])
        return out


def _normalise_turns(conversations: list[dict[str, str]]) -> list[tuple[str, str]]:
    """LLaVA turns -> (role, text); checks roles and that user and assistant alternate, starting with the user."""
    if not conversations:
        raise ValueError("conversation is empty")
    turns = []
    for i, turn in enumerate(conversations):
        speaker = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        if speaker not in ROLES or not isinstance(text, str):
            raise ValueError(f"turn {i}: needs 'from' in {sorted(ROLES)} and a string 'value', got {turn}")
        turns.append((ROLES[speaker], text))
    body = turns[1:] if turns[0][0] == "system" else turns
    for i, (role, _) in enumerate(body):
        if role != ("user" if i % 2 == 0 else "assistant"):
            raise ValueError(f"turn {i}: expected {'user' if i % 2 == 0 else 'assistant'}, got {role} "
                             "(turns must alternate, starting with the user)")
    return turns
