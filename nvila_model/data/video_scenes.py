"""Video subsets of the synthetic corpus: tasks that a single frame cannot answer (motion, order, flash count)."""

from __future__ import annotations

from abc import abstractmethod

import numpy as np

from .render import SHAPES, canvas, draw_shapes
from .scenes import COLOUR_NAMES, Scene, Subset, _bg, _pick, place

SLOT = 2  # default frames per time slot: events last whole slots so any uniform sampling of >= frames/2 sees them


def event_offsets(rng: np.random.Generator, count: int, slot_frames: int, event_frames: int | None) -> list[int]:
    """Where each of `count` events starts inside its slot: 0 when it fills the slot (`event_frames` None or equal
    to the slot; no random draw, so the standard corpus is unchanged), else a random offset that keeps it inside."""
    if event_frames is None or event_frames == slot_frames:
        return [0] * count
    return [int(o) for o in rng.integers(0, slot_frames - event_frames + 1, size=count)]


class VideoSubset(Subset):
    """A video task: `shapes_at(scene, t)` lists the shapes visible in frame t."""

    media = "video"
    knobs = ("frames",)

    @abstractmethod
    def shapes_at(self, scene: Scene, t: int) -> list[dict]:
        raise NotImplementedError

    def qtypes(self, scene: Scene) -> list[str]:
        return [scene["qtype"]]

    def render(self, scene: Scene) -> np.ndarray:
        """uint8 frames [F, H, W, 3]."""
        frames = [np.asarray(draw_shapes(canvas(scene["w"], scene["h"], scene["bg"]), self.shapes_at(scene, t)))
                  for t in range(scene["frames"])]
        return np.stack(frames)


class Motion(VideoSubset):
    name = "motion"
    questions = {"direction": ("left", "right", "up", "down")}
    templates = {"direction": ("Which way does the {colour} {kind} move?", "In which direction is the {kind} moving?")}

    def sample(self, rng: np.random.Generator, width: int, height: int, frames: int = 16) -> Scene:
        direction = str(rng.choice(self.questions["direction"]))
        r = round(float(rng.uniform(0.12, 0.16)) * min(width, height), 1)
        kind, colour = _pick(rng, SHAPES)[0], _pick(rng, COLOUR_NAMES)[0]
        lo_x, hi_x, lo_y, hi_y = r + 1, width - r - 1, r + 1, height - r - 1
        x, y = float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))
        start, end = {"left": ([hi_x, y], [lo_x, y]), "right": ([lo_x, y], [hi_x, y]),
                      "up": ([x, hi_y], [x, lo_y]), "down": ([x, lo_y], [x, hi_y])}[direction]
        return {"w": width, "h": height, "bg": _bg(rng), "frames": frames, "qtype": "direction",
                "shape": {"kind": kind, "colour": colour, "r": r}, "start": start, "end": end,
                "slots": {"kind": kind, "colour": colour}}

    def answer(self, scene: Scene, qtype: str) -> str:
        (x0, y0), (x1, y1) = scene["start"], scene["end"]
        if abs(x1 - x0) > abs(y1 - y0):
            return "right" if x1 > x0 else "left"
        return "down" if y1 > y0 else "up"

    def shapes_at(self, scene: Scene, t: int) -> list[dict]:
        a = t / max(1, scene["frames"] - 1)
        (x0, y0), (x1, y1) = scene["start"], scene["end"]
        return [{**scene["shape"], "x": x0 + a * (x1 - x0), "y": y0 + a * (y1 - y0)}]


class Order(VideoSubset):
    name = "order"
    questions = {"order": ("before", "after")}
    templates = {"order": ("Did the {a} shape appear before or after the {b} shape?",)}
    knobs = ("frames", "slot_frames", "event_frames")

    def sample(self, rng: np.random.Generator, width: int, height: int, frames: int = 16, slot_frames: int = SLOT,
               event_frames: int | None = None) -> Scene:
        num_slots = frames // slot_frames
        r = round(float(rng.uniform(0.14, 0.2)) * min(width, height), 1)
        first, second = sorted(int(s) for s in rng.choice(np.arange(0, num_slots - 1), size=2, replace=False))
        colours = _pick(rng, COLOUR_NAMES, 2)
        kinds = rng.choice(SHAPES, size=2)
        shapes = [{"kind": str(k), "colour": c, "x": x, "y": y, "r": r, "appear": slot * slot_frames}
                  for k, c, (x, y), slot in zip(kinds, colours, place(rng, width, height, r, 2), (first, second),
                                                strict=True)]
        a, b = (colours if rng.integers(2) else colours[::-1])
        for shape, offset in zip(shapes, event_offsets(rng, 2, slot_frames, event_frames), strict=True):
            shape["appear"] += offset
        return {"w": width, "h": height, "bg": _bg(rng), "frames": frames, "qtype": "order", "shapes": shapes,
                "slots": {"a": a, "b": b}}

    def answer(self, scene: Scene, qtype: str) -> str:
        appear = {s["colour"]: s["appear"] for s in scene["shapes"]}
        return "before" if appear[scene["slots"]["a"]] < appear[scene["slots"]["b"]] else "after"

    def shapes_at(self, scene: Scene, t: int) -> list[dict]:
        return [s for s in scene["shapes"] if t >= s["appear"]]


class Flashes(VideoSubset):
    name = "flashes"
    questions = {"flashes": ("1", "2", "3")}
    templates = {"flashes": ("How many times does the {colour} {kind} flash?", "Count the flashes of the {kind}.")}
    knobs = ("frames", "slot_frames", "event_frames")

    def sample(self, rng: np.random.Generator, width: int, height: int, frames: int = 16, slot_frames: int = SLOT,
               event_frames: int | None = None) -> Scene:
        num_slots = frames // slot_frames
        count = int(rng.integers(1, 4))
        if num_slots < 2 * count:
            raise ValueError(f"flashes: {frames} frames are too few for {count} flashes; "
                             f"use >= {2 * count * slot_frames}")
        # choose `count` on-slots with at least one off-slot between them: pick from a shrunk range, then spread
        picks = sorted(int(s) for s in rng.choice(np.arange(num_slots - count + 1), size=count, replace=False))
        on_slots = [p + i for i, p in enumerate(picks)]
        r = round(float(rng.uniform(0.2, 0.3)) * min(width, height), 1)
        (x, y), = place(rng, width, height, r, 1)
        kind, colour = _pick(rng, SHAPES)[0], _pick(rng, COLOUR_NAMES)[0]
        scene = {"w": width, "h": height, "bg": _bg(rng), "frames": frames, "qtype": "flashes", "on": on_slots,
                 "shape": {"kind": kind, "colour": colour, "x": x, "y": y, "r": r},
                 "slots": {"kind": kind, "colour": colour}}
        if slot_frames != SLOT or event_frames not in (None, slot_frames):  # else the standard scene, unchanged
            length = event_frames or slot_frames
            offsets = event_offsets(rng, count, slot_frames, event_frames)
            scene["flash_frames"] = [[s * slot_frames + o, s * slot_frames + o + length]
                                     for s, o in zip(on_slots, offsets, strict=True)]
        return scene

    def answer(self, scene: Scene, qtype: str) -> str:
        on = sorted(scene["on"])
        runs = sum(1 for i, s in enumerate(on) if i == 0 or s != on[i - 1] + 1)
        return str(runs)

    def flash_frames(self, scene: Scene) -> list[list[int]]:
        """[start, end) frames of each flash."""
        return scene.get("flash_frames") or [[s * SLOT, (s + 1) * SLOT] for s in scene["on"]]

    def shapes_at(self, scene: Scene, t: int) -> list[dict]:
        return [scene["shape"]] if any(a <= t < b for a, b in self.flash_frames(scene)) else []
