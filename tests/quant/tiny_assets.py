"""Test assets built in a temporary folder: a tiny NVILA checkpoint and a LLaVA manifest with images and videos."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from nvila_model.modeling import NVILAForConditionalGeneration
from nvila_model.presets import build_config
from nvila_model.processor import NVILAProcessor
from nvila_model.tokenizer import train_tokenizer

QUESTIONS = ["What colour is the square?", "How many circles are there?", "What shape is shown?"]
ANSWERS = ["red", "3", "triangle"]


def write_video(path: Path, num_frames: int = 12, size: int = 40) -> None:
    """A small mp4 of moving colour blocks, written with PyAV."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(num_frames):
            frame = np.zeros((size, size, 3), dtype=np.uint8)
            frame[:, (i * 3) % size:(i * 3) % size + 8] = (200, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def tiny_model_and_processor(seed: int = 0) -> tuple[NVILAForConditionalGeneration, NVILAProcessor]:
    """A freshly initialised tiny NVILA model with a tokenizer trained on the test questions."""
    tokenizer = train_tokenizer(QUESTIONS + ANSWERS + ["What happens in the video?"], vocab_size=512)
    config = build_config("tiny")
    config.text_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config.text_config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    return NVILAForConditionalGeneration(config).eval(), NVILAProcessor(tokenizer, config)


def build_tiny_data(root: Path) -> Path:
    """A manifest of 6 image records and 2 video records (LLaVA format) with its media beside it."""
    rng = np.random.RandomState(0)
    records = []
    for i in range(6):
        Image.fromarray(rng.randint(0, 255, (36 + 4 * i, 48, 3), dtype=np.uint8)).save(root / f"img{i}.png")
        records.append({"id": f"img-{i}", "image": f"img{i}.png", "conversations": [
            {"from": "human", "value": "<image>\n" + QUESTIONS[i % 3]}, {"from": "gpt", "value": ANSWERS[i % 3]}]})
    for i in range(2):
        write_video(root / f"vid{i}.mp4")
        records.append({"id": f"vid-{i}", "video": f"vid{i}.mp4", "conversations": [
            {"from": "human", "value": "<video>\nWhat happens in the video?"}, {"from": "gpt", "value": "red"}]})
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return root / "train.jsonl"


def build_tiny_checkpoint(path: Path) -> Path:
    """A saved tiny NVILA checkpoint directory (config.json, model.safetensors, processor files)."""
    model, processor = tiny_model_and_processor()
    model.save_pretrained(str(path))
    processor.save_pretrained(path)
    return path
