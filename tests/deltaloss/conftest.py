"""Shared fixtures of the DeltaLoss tests: one Ray instance per module that needs it (2 CPUs, private temp dir)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance (~4 s to start) whose workers can import the toy scorers; shut down afterwards."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    temp_dir = tempfile.mkdtemp(prefix="ray-dl-", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    pythonpath = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


@pytest.fixture(scope="session")
def colour_corpus(tmp_path_factory, tokenizer, processor):
    """Six one-image colour questions, a random-init tiny checkpoint (small) and one fitted to record 'fit' (large).

    The large scorer starts from the same weights and takes a few AdamW steps on 'fit' alone, so it has learned that
    sample and nothing else: the hand-made case of "the large model fits it, the small one does not".
    """
    import torch
    from PIL import Image

    from nvila_model.data.manifest import write_jsonl
    from nvila_model.modeling import NVILAForConditionalGeneration

    root = tmp_path_factory.mktemp("colour")
    answers = ["red", "green", "blue", "green", "red", "blue"]
    records = []
    for i, answer in enumerate(answers):
        picture = Image.new("RGB", (40 + 8 * i, 32), (128, 128, 128))  # a square on grey: the tiny preset centres
        picture.paste(COLOURS[answer], (8, 8, 24, 24))  # each picture's tokens, a flat one keeps almost nothing
        picture.save(root / f"{i}.png")
        records.append({"id": "fit" if i == 0 else f"c{i}", "subset": "colour" if i % 2 == 0 else "shape",
                        "image": f"{i}.png", "conversations": [
                            {"from": "human", "value": "<image>\nWhat colour is the square?"},
                            {"from": "gpt", "value": answer}]})
    write_jsonl(records, root / "train.jsonl")
    torch.manual_seed(0)
    model = NVILAForConditionalGeneration(processor.config)
    model.save_pretrained(str(root / "small"))
    processor.save_pretrained(root / "small")
    with Image.open(root / "0.png") as img:
        batch = processor.pad([processor.encode(records[0]["conversations"], images=[img.convert("RGB")])])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(25):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval().save_pretrained(str(root / "large"))
    processor.save_pretrained(root / "large")
    return root
