"""`nvila data generate`: the seeded, byte-reproducible synthetic multi-task visual-QA corpus in LLaVA format."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from ..manifest import staged_output, write_stage_manifest
from ..params import to_dict
from .config import DEFAULT_SUBSETS, GenerateConfig, SubsetConfig, subset_configs
from .manifest import SUBSETS_FILE, write_jsonl
from .render import save_png, shift_frames, write_mp4
from .scenes import Attributes, BarChart, Compare, Counting, Scene, Spatial, Subset, TextReading, jitter_image
from .video_scenes import Flashes, Motion, Order, VideoSubset

SUBSETS: dict[str, Subset] = {s.name: s for s in (Attributes(), Counting(), Spatial(), TextReading(), BarChart(),
                                                  Compare(), Motion(), Order(), Flashes())}
assert list(SUBSETS) == list(DEFAULT_SUBSETS), "every scene family has its default settings in data/config.py"
SPLITS = ("train", "val", "test")
MARKER = {"image": "<image>\n", "images": "<image>\n<image>\n", "video": "<video>\n"}
JITTERS = ((1, 0), (-1, 0), (0, 1), (0, -1))
# decord 0.6.0 returns mis-strided frames for these widths (checked for even widths 16-198), so videos avoid them
DECORD_BAD_WIDTHS = frozenset({16, 24, 48, 72})


def _split_size(sc: SubsetConfig, split: str, scale: float) -> int:
    return max(1, round(getattr(sc, split) * scale))


def _canvas_size(rng: np.random.Generator, sc: SubsetConfig, even: bool) -> tuple[int, int]:
    side = int(rng.integers(sc.min_side, sc.max_side + 1))
    ratio = float(sc.aspect_ratios[int(rng.integers(len(sc.aspect_ratios)))])
    w, h = side * math.sqrt(ratio), side / math.sqrt(ratio)
    if even:
        w, h = 2 * round(w / 2), 2 * round(h / 2)
        while w in DECORD_BAD_WIDTHS:
            w += 2
        return w, h
    return round(w), round(h)


def _conversation(subset: Subset, scene: Scene, qtypes: list[str], rng: np.random.Generator) -> list[dict]:
    turns = []
    for i, q in enumerate(qtypes):
        prefix = MARKER[subset.media] if i == 0 else ""
        turns.append({"from": "human", "value": prefix + subset.ask(scene, q, rng)})
        turns.append({"from": "gpt", "value": subset.answer(scene, q)})
    return turns


def _base_record(subset: Subset, sc: SubsetConfig, split: str, idx: int, rng: np.random.Generator) -> dict:
    width, height = _canvas_size(rng, sc, even=isinstance(subset, VideoSubset))
    scene = subset.sample(rng, width, height, **{knob: getattr(sc, knob) for knob in subset.knobs})
    qtypes = subset.qtypes(scene)
    qtypes = qtypes[:2] if len(qtypes) > 1 and rng.random() < sc.multi_turn else qtypes[:1]
    return {"id": f"{subset.name}-{split}-{idx:05d}", "subset": subset.name,
            "conversations": _conversation(subset, scene, qtypes, rng), "qtypes": qtypes, "scene": scene}


def _add_noise(record: dict, answers: dict[str, tuple[str, ...]], rng: np.random.Generator) -> None:
    """Replace the last answer with a different member of its answer set (`answers`: question type -> set)."""
    qtype, turn = record["qtypes"][-1], record["conversations"][-1]
    wrong = [a for a in answers[qtype] if a != turn["value"]]
    turn["value"] = wrong[int(rng.integers(len(wrong)))]
    record["defect"] = "noise"


def build_split(subset: Subset, sc: SubsetConfig, split: str, size: int, rng: np.random.Generator) -> list[dict]:
    """Records (without media paths) of one subset and split, defects injected into train only, shuffled."""
    num_dup = round(sc.duplicate * size) if split == "train" else 0
    num_noise = round(sc.noise * size) if split == "train" else 0
    base = [_base_record(subset, sc, split, i, rng) for i in range(size - num_dup)]
    dups = []
    for j in range(num_dup):
        src = base[int(rng.integers(len(base)))]
        dup = copy.deepcopy(src)
        dup["id"] = f"{subset.name}-{split}-{len(base) + j:05d}"
        dup["scene"]["jitter"] = list(JITTERS[int(rng.integers(len(JITTERS)))])
        dup.update(defect="duplicate", duplicate_of=src["id"])
        dups.append(dup)
    answers = subset.answer_sets(sc)
    for i in rng.choice(len(base), size=num_noise, replace=False):
        _add_noise(base[int(i)], answers, rng)
    records = base + dups
    return [records[int(i)] for i in rng.permutation(len(records))]


def write_media(record: dict, subset: Subset, root: Path) -> None:
    """Render the record's scene, write it under `root`, and set the record's media key(s)."""
    scene, rid = record["scene"], record["id"]
    dx, dy = scene.get("jitter", (0, 0))
    if subset.media == "video":
        rel = f"videos/{rid}.mp4"
        write_mp4(shift_frames(subset.render(scene), dx, dy, scene["bg"]), root / rel)
        record["video"] = rel
    elif subset.media == "images":
        rels = []
        for k, img in enumerate(subset.render(scene)):
            rels.append(f"images/{rid}-{k}.png")
            save_png(jitter_image(img, scene), root / rels[-1])
        record["images"] = rels
    else:
        rel = f"images/{rid}.png"
        save_png(jitter_image(subset.render(scene), scene), root / rel)
        record["image"] = rel


def subsets_table(configs: dict[str, SubsetConfig], scale: float) -> list[dict]:
    """What `subsets.json` states about each subset: media kind, answer sets, chance level, split sizes."""
    table = []
    for name, sc in configs.items():
        if not sc.enabled:
            continue
        s = SUBSETS[name]
        questions = s.answer_sets(sc)
        answers = sorted({a for ans in questions.values() for a in ans})
        table.append({"name": name, "media": s.media, "questions": {q: list(a) for q, a in questions.items()},
                      "answers": answers, "chance": round(s.chance(sc), 4),
                      "sizes": {sp: _split_size(sc, sp, scale) for sp in SPLITS},
                      "noise": sc.noise, "duplicate": sc.duplicate, "config": dataclasses.asdict(sc)})
    return table


def _check_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / SUBSETS_FILE).is_file():
        raise ValueError(f"{out}: exists and was not written by `nvila data generate`; refusing to overwrite it")


def run_generate(cfg: GenerateConfig, out: str | Path) -> Path:
    """Generate every enabled subset and split into `out`: {train,val,test}.jsonl, media and subsets.json."""
    configs = subset_configs(cfg)
    out = Path(out)
    _check_out(out)
    with staged_output(out) as root:
        _generate(cfg, configs, root)
    return out


def _generate(cfg: GenerateConfig, configs: dict[str, SubsetConfig], root: Path) -> None:
    for split_idx, split in enumerate(SPLITS):
        records = []
        for subset_idx, (name, sc) in enumerate(configs.items()):
            if not sc.enabled:
                continue
            rng = np.random.default_rng([cfg.seed, subset_idx, split_idx])
            subset = SUBSETS[name]
            for record in build_split(subset, sc, split, _split_size(sc, split, cfg.scale), rng):
                write_media(record, subset, root)
                records.append(record)
        write_jsonl(records, root / f"{split}.jsonl")
    table = subsets_table(configs, cfg.scale)
    (root / SUBSETS_FILE).write_text(json.dumps(table, indent=2) + "\n")
    write_stage_manifest(root, "generate", to_dict(cfg), media_root=".",
                         counts={t["name"]: t["sizes"] for t in table})
