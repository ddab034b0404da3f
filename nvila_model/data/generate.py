"""`nvila data generate`: the seeded, byte-reproducible synthetic multi-task visual-QA corpus in LLaVA format."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..manifest import write_stage_manifest
from ..params import from_dict, to_dict
from .manifest import write_jsonl
from .render import save_png, shift_frames, write_mp4
from .scenes import Attributes, BarChart, Compare, Counting, Scene, Spatial, Subset, TextReading, jitter_image
from .video_scenes import Flashes, Motion, Order, VideoSubset

SUBSETS: dict[str, Subset] = {s.name: s for s in (Attributes(), Counting(), Spatial(), TextReading(), BarChart(),
                                                  Compare(), Motion(), Order(), Flashes())}
SPLITS = ("train", "val", "test")
MARKER = {"image": "<image>\n", "images": "<image>\n<image>\n", "video": "<video>\n"}
JITTERS = ((1, 0), (-1, 0), (0, 1), (0, -1))
# decord 0.6.0 returns mis-strided frames for these widths (checked for even widths 16-198), so videos avoid them
DECORD_BAD_WIDTHS = frozenset({16, 24, 48, 72})


@dataclass
class SubsetConfig:
    """Per-subset knobs. Defects (`noise`: wrong answers, `duplicate`: near-duplicates) go into train only."""

    enabled: bool = True
    train: int = 300
    val: int = 30
    test: int = 40
    min_side: int = 48
    max_side: int = 96
    aspect_ratios: list[float] = field(default_factory=lambda: [1.0])
    noise: float = 0.1
    duplicate: float = 0.1
    multi_turn: float = 0.0
    frames: int = 16


_VIDEO = {"train": 150, "val": 20, "test": 30, "min_side": 48, "max_side": 64, "aspect_ratios": [1.0, 1.33]}
DEFAULT_SUBSETS: dict[str, dict[str, Any]] = {
    "attributes": {"min_side": 48, "max_side": 96, "aspect_ratios": [1.0, 1.5, 0.67], "multi_turn": 0.3},
    "counting": {"min_side": 64, "max_side": 112, "aspect_ratios": [1.0, 1.33, 0.75]},
    "spatial": {"min_side": 64, "max_side": 112, "aspect_ratios": [1.0, 1.5, 2.0]},
    "text": {"min_side": 72, "max_side": 112, "aspect_ratios": [2.0, 3.0]},
    "chart": {"min_side": 64, "max_side": 128, "aspect_ratios": [1.0, 1.33, 1.5], "multi_turn": 0.3},
    "compare": {"min_side": 40, "max_side": 64, "multi_turn": 0.3},
    "motion": dict(_VIDEO),
    "order": dict(_VIDEO),
    "flashes": dict(_VIDEO),
}


@dataclass
class GenerateConfig:
    """params.yaml `generate`: where to write, seed, size multiplier, per-subset overrides of `SubsetConfig`."""

    name: str = "synth"
    out_dir: str = "data/raw"
    seed: int = 0
    scale: float = 1.0
    subsets: dict[str, dict[str, Any]] = field(default_factory=dict)


def subset_configs(cfg: GenerateConfig) -> dict[str, SubsetConfig]:
    """Defaults merged with the user's overrides; unknown subsets or knobs raise `ValueError`."""
    unknown = sorted(set(cfg.subsets) - set(SUBSETS))
    if unknown:
        raise ValueError(f"generate.subsets: unknown subset(s) {unknown}; known: {sorted(SUBSETS)}")
    if cfg.scale <= 0:
        raise ValueError(f"generate.scale must be positive, got {cfg.scale}")
    out = {}
    for name, defaults in DEFAULT_SUBSETS.items():
        sc = from_dict(SubsetConfig, {**defaults, **(cfg.subsets.get(name) or {})}, where=f"generate.subsets.{name}")
        if not (0 <= sc.noise < 1 and 0 <= sc.duplicate < 1 and sc.noise + sc.duplicate < 1):
            raise ValueError(f"generate.subsets.{name}: noise and duplicate must be shares in [0, 1) summing below 1")
        if sc.min_side < 16 or sc.max_side < sc.min_side or not sc.aspect_ratios:
            raise ValueError(f"generate.subsets.{name}: need 16 <= min_side <= max_side and some aspect_ratios")
        out[name] = sc
    return out


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
    extra = {"frames": sc.frames} if isinstance(subset, VideoSubset) else {}
    scene = subset.sample(rng, width, height, **extra)
    qtypes = subset.qtypes(scene)
    qtypes = qtypes[:2] if len(qtypes) > 1 and rng.random() < sc.multi_turn else qtypes[:1]
    return {"id": f"{subset.name}-{split}-{idx:05d}", "subset": subset.name,
            "conversations": _conversation(subset, scene, qtypes, rng), "qtypes": qtypes, "scene": scene}


def _add_noise(record: dict, subset: Subset, rng: np.random.Generator) -> None:
    """Replace the last answer with a different member of its answer set."""
    qtype, turn = record["qtypes"][-1], record["conversations"][-1]
    wrong = [a for a in subset.questions[qtype] if a != turn["value"]]
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
    for i in rng.choice(len(base), size=num_noise, replace=False):
        _add_noise(base[int(i)], subset, rng)
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
        answers = sorted({a for ans in s.questions.values() for a in ans})
        table.append({"name": name, "media": s.media, "questions": {q: list(a) for q, a in s.questions.items()},
                      "answers": answers, "chance": round(s.chance(), 4),
                      "sizes": {sp: _split_size(sc, sp, scale) for sp in SPLITS},
                      "noise": sc.noise, "duplicate": sc.duplicate, "config": dataclasses.asdict(sc)})
    return table


def _prepare_out(root: Path) -> None:
    if root.exists() and any(root.iterdir()):
        if not (root / "subsets.json").is_file():
            raise ValueError(f"{root}: exists and was not written by `nvila data generate`; refusing to overwrite it")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)


def run_generate(cfg: GenerateConfig) -> Path:
    """Generate every enabled subset and split; returns `out_dir/name` holding {train,val,test}.jsonl + media."""
    configs = subset_configs(cfg)
    root = Path(cfg.out_dir) / cfg.name
    _prepare_out(root)
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
    (root / "subsets.json").write_text(json.dumps(table, indent=2) + "\n")
    write_stage_manifest(root, "generate", to_dict(cfg), media_root=".",
                         counts={t["name"]: t["sizes"] for t in table})
    return root
