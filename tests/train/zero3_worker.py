"""One rank of the two-process ZeRO-3 test (run under torchrun): rank 0 trains on image records, rank 1 on
text-only records of the same count, so every step one rank's micro-batch has no media. Writes `rank<R>.json` and
the stage output `runs/zero3`. Arguments: params file, DeepSpeed config, corpus folder, tokenizer folder."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import yaml

from nvila_model.data.registry import DatasetRegistry, DatasetsConfig
from nvila_model.modeling import NVILAForConditionalGeneration
from nvila_model.params import parse
from nvila_model.train.config import ModelParams, StageConfig
from nvila_model.train.stage import build_model, fit, work_dir

NUM_RECORDS = 8


def rank_records(params: dict, data: str, rank: int) -> list[dict]:
    records = DatasetRegistry(parse(DatasetsConfig, params["datasets"]), data).records("synth-image", "train")
    records = records[:NUM_RECORDS]
    if rank == 0:
        return records
    text = [{"from": "human", "value": "Say the word dog."}, {"from": "gpt", "value": "dog"}]
    return [{"id": f"text-{i}", "conversations": text} for i in range(NUM_RECORDS)]


def main(params_file: str, zero3_config: str, data: str, tokenizer: str) -> None:
    rank = int(os.environ["RANK"])
    params = yaml.safe_load(Path(params_file).read_text())
    cfg = StageConfig(train_modules=["vision_tower", "projector", "language_model"],
                      lr={"vision_tower": 1e-4, "projector": 1e-3, "language_model": 1e-3}, datasets=["synth-image"],
                      batch_size=2, max_steps=3, logging_steps=1, save_steps=100, max_length=512,
                      deepspeed=zero3_config, precision="fp32")
    seen = {"media": 0, "text_only": 0, "partitioned_at_build": False}
    real_embed = NVILAForConditionalGeneration.embed

    def embed(self, input_ids, pixel_values, media_layout):
        seen["text_only" if media_layout is None or media_layout.numel() == 0 else "media"] += 1
        return real_embed(self, input_ids, pixel_values, media_layout)

    def make_model():
        model, processor = build_model(cfg, ModelParams(preset="tiny"), tokenizer_dir=tokenizer)
        seen["partitioned_at_build"] = all(hasattr(p, "ds_id") for p in model.parameters())
        return model, processor

    NVILAForConditionalGeneration.embed = embed
    fit("image_sft", cfg, make_model, rank_records(params, data, rank), {}, Path("runs/zero3"),
        work_dir("image_sft", "zero3-test"))
    seen["group_open_after_fit"] = torch.distributed.is_initialized()
    Path(f"rank{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(*sys.argv[1:])
