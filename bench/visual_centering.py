"""Can a tiny NVILA trained from scratch learn to read the frontier's `text` task, with and without centring each
picture's visual tokens (`NVILAConfig.center_visual_tokens`)? Same text-only corpus, seed, batches and optimizer
settings (the `image_sft` learning rates and gradient clipping of params.yaml) for both; every module trains.

On flat-background pictures a fresh model's visual tokens are nearly one vector shared by every picture, and
training grows that shared part: the LLM's RMSNorm then leaves too little of what tells pictures apart to learn from.
The table gives that share (the norm of the mean token over all pictures against the mean token norm), the training
loss (chance: about ln(8)/2, the word and the end token) and the test exact match (teacher-forced greedy tokens of
the whole answer; chance 1/8).

    python bench/visual_centering.py [--train 1500] [--test 200] [--steps 300] [--memorise 0]

`--memorise N` trains on the first N records only (can the model fit them at all?). Prints a table and writes
bench/results/visual_centering.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table, write_results  # noqa: E402

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def text_corpus(root: Path, train: int, test: int, seed: int) -> tuple[Path, Path]:
    """The frontier's `text` subset alone (its sizes from params.yaml), without label noise or duplicates."""
    from nvila_model.data.config import DEFAULT_SUBSETS, GenerateConfig
    from nvila_model.data.generate import run_generate
    from nvila_model.data.manifest import conversation_text, read_manifest
    from nvila_model.tokenizer import train_tokenizer

    params = yaml.safe_load(PARAMS.read_text())
    text = params["frontier"]["settings"]["generate.subsets"]["text"]
    subsets = {name: {"enabled": False} for name in DEFAULT_SUBSETS if name != "text"}
    subsets["text"] = {**text, "train": train, "test": test, "noise": 0.0, "duplicate": 0.0}
    data = run_generate(GenerateConfig(seed=seed, subsets=subsets), root / "raw")
    texts = [conversation_text(r["conversations"]) for r in read_manifest(data / "train.jsonl")]
    train_tokenizer(texts, 512).save_pretrained(str(root / "tokenizer"))
    return data, root / "tokenizer"


def shared_share(model, batch) -> float:
    """Norm of the mean visual token over every token of every picture, over the mean token norm."""
    import torch

    with torch.no_grad():
        tokens_ND = torch.cat(model.encode_media(batch["pixel_values"], batch["media_layout"]))
    return float(tokens_ND.mean(0).norm() / tokens_ND.norm(dim=1).mean())


def raw_shared_share(model, batch) -> float:
    """The same, before any centring: what the projector itself outputs."""
    centred = model.config.center_visual_tokens
    model.config.center_visual_tokens = False
    try:
        return shared_share(model, batch)
    finally:
        model.config.center_visual_tokens = centred


def exact_match(model, dataset, collate, batch_size: int = 16) -> float:
    """Share of test records whose every answer token is the model's argmax under teacher forcing."""
    import torch

    from nvila_model.data.collate import model_inputs

    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            inputs = model_inputs(batch)
            labels = inputs.pop("labels")
            inputs.pop("attention_mask", None)
            embeds = model.embed(inputs.pop("input_ids"), inputs.pop("pixel_values"), inputs.pop("media_layout"))
            logits_TV, targets_T, supervised_1L = model.supervised_logits(embeds, None, inputs.pop("position_ids"),
                                                                          labels, **inputs)
            hit_T = logits_TV.argmax(-1) == targets_T
            record_L = torch.repeat_interleave(torch.arange(len(batch["ids"])), batch["sample_lengths"])
            record_T = record_L[supervised_1L[0]]
            misses = torch.zeros(len(batch["ids"]), dtype=torch.long).index_add_(0, record_T, (~hit_T).long())
            correct += int((misses == 0).sum())
    model.train()
    return correct / len(dataset)


def train(center: bool, data: Path, tok_dir: Path, steps: int, memorise: int, seed: int) -> dict:
    import torch

    from nvila_model.data.collate import PackingCollator, model_inputs
    from nvila_model.data.loader import LlavaDataset
    from nvila_model.data.manifest import read_manifest
    from nvila_model.modeling import NVILAForConditionalGeneration
    from nvila_model.presets import build_config
    from nvila_model.processor import NVILAProcessor
    from nvila_model.tokenizer import load_tokenizer

    params = yaml.safe_load(PARAMS.read_text())
    sft = params["image_sft"]
    tokenizer = load_tokenizer(tok_dir)
    config = build_config(params["model"]["preset"], center_visual_tokens=center)
    config.text_config.pad_token_id, config.text_config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    torch.manual_seed(seed)
    model = NVILAForConditionalGeneration(config).train()
    model.set_attn_implementation("sdpa_varlen")
    processor = NVILAProcessor(tokenizer, config)
    records = read_manifest(data / "train.jsonl")
    records = records[:memorise] if memorise else records
    train_set = LlavaDataset(records, data, processor, max_length=sft["max_length"])
    test_set = LlavaDataset(read_manifest(data / "test.jsonl"), data, processor, max_length=sft["max_length"])
    collate = PackingCollator()
    groups: dict[str, list] = {}
    for name, param in model.named_parameters():
        groups.setdefault(name.split(".")[0], []).append(param)
    optimizer = torch.optim.AdamW([{"params": ps, "lr": sft["lr"][name]} for name, ps in groups.items()],
                                  weight_decay=sft["weight_decay"])
    warmup = max(1, math.ceil(sft["warmup_ratio"] * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(  # the stages' schedule: linear warm-up, cosine decay
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    order = torch.Generator().manual_seed(seed)
    probe = collate([train_set[i] for i in range(min(32, len(train_set)))])
    row = {"centred": center, "shared_share_start": shared_share(model, probe)}
    began, smoothed = time.perf_counter(), None
    for step in range(steps):
        batch = collate([train_set[i] for i in torch.randint(len(train_set), (sft["batch_size"],),
                                                             generator=order).tolist()])
        loss = model(**model_inputs(batch)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), sft["max_grad_norm"])
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        smoothed = loss.item() if smoothed is None else 0.9 * smoothed + 0.1 * loss.item()
        if (step + 1) % 50 == 0:
            print(f"centred={center} step {step + 1}/{steps} loss {smoothed:.3f}", flush=True)
    return row | {"projector_shared_share_end": raw_shared_share(model, probe),
                  "shared_share_end": shared_share(model, probe), "train_loss_end": smoothed,
                  "test_exact_match": exact_match(model, test_set, collate),
                  "train_seconds": time.perf_counter() - began}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=1500)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--memorise", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, tok_dir = text_corpus(Path(tmp), args.train, args.test, args.seed)
        rows = [train(center, data, tok_dir, args.steps, args.memorise, args.seed) for center in (False, True)]
    print_table(rows, ["centred", "shared_share_start", "projector_shared_share_end", "shared_share_end",
                       "train_loss_end", "test_exact_match", "train_seconds"])
    name = "visual_centering" + (f"_memorise{args.memorise}" if args.memorise else "")
    write_results(name, {"settings": vars(args), "chance_exact_match": 0.125, "rows": rows})


if __name__ == "__main__":
    main()
