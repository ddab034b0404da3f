"""Image subsets of the synthetic corpus: scene sampling, templated questions, answers recomputed from the scene."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from .render import BACKGROUNDS, COLOURS, SHAPES, canvas, draw_shapes, draw_text, shift, text_size

if TYPE_CHECKING:
    from .config import SubsetConfig

Scene = dict[str, Any]
COLOUR_NAMES = tuple(COLOURS)
WORDS = ("cat", "dog", "sun", "box", "car", "map", "pen", "cup")  # the text subset's default vocabulary


class Subset(ABC):
    """One task family: `questions` maps question type -> closed answer set; `media` is image, images or video."""

    name: str = ""
    media: str = "image"
    questions: dict[str, tuple[str, ...]] = {}
    templates: dict[str, tuple[str, ...]] = {}
    knobs: tuple[str, ...] = ()  # SubsetConfig fields that `sample` takes as keyword arguments

    @abstractmethod
    def sample(self, rng: np.random.Generator, width: int, height: int) -> Scene:
        raise NotImplementedError

    @abstractmethod
    def answer(self, scene: Scene, qtype: str) -> str:
        raise NotImplementedError

    @abstractmethod
    def render(self, scene: Scene) -> Any:
        raise NotImplementedError

    def qtypes(self, scene: Scene) -> list[str]:
        """Question types this scene can answer, in asking order (the first is the scene's target)."""
        return [scene["qtype"]] + [q for q in self.questions if q != scene["qtype"]]

    def ask(self, scene: Scene, qtype: str, rng: np.random.Generator) -> str:
        template = self.templates[qtype][int(rng.integers(len(self.templates[qtype])))]
        return template.format(**scene.get("slots", {}))

    def answer_sets(self, sc: SubsetConfig) -> dict[str, tuple[str, ...]]:
        """Question type -> closed answer set under the subset's settings (`questions` unless a knob changes it)."""
        return self.questions

    def chance(self, sc: SubsetConfig) -> float:
        """Exact-match accuracy of a uniform guess over each question type's answer set, averaged over types."""
        return float(np.mean([1.0 / len(a) for a in self.answer_sets(sc).values()]))


def _bg(rng: np.random.Generator) -> list[int]:
    return list(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))])


def place(rng: np.random.Generator, width: int, height: int, r: float, n: int,
          min_gap: float = 2.0) -> list[list[float]]:
    """`n` non-overlapping centres for shapes of half-size `r` inside a width x height picture."""
    for _ in range(200):
        xs = rng.uniform(r + 1, width - r - 1, size=n)
        ys = rng.uniform(r + 1, height - r - 1, size=n)
        pts = np.stack([xs, ys], 1)
        dists = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(n) * 1e9
        if n == 1 or dists.min() >= 2 * r + min_gap:
            return [[round(float(x), 1), round(float(y), 1)] for x, y in pts]
    raise ValueError(f"cannot place {n} shapes of size {r:.1f} in {width}x{height}; enlarge the resolution range")


def _pick(rng: np.random.Generator, items: tuple[str, ...], n: int = 1) -> list[str]:
    return [str(x) for x in rng.choice(items, size=n, replace=False)]


class Attributes(Subset):
    name = "attributes"
    questions = {"colour": COLOUR_NAMES, "shape": SHAPES}
    templates = {
        "colour": ("What colour is the shape?", "Which colour does the shape have?"),
        "shape": ("What shape is this?", "Which shape is shown?"),
    }

    def sample(self, rng: np.random.Generator, width: int, height: int) -> Scene:
        r = round(float(rng.uniform(0.2, 0.32)) * min(width, height), 1)
        (x, y), = place(rng, width, height, r, 1)
        shape = {"kind": _pick(rng, SHAPES)[0], "colour": _pick(rng, COLOUR_NAMES)[0], "x": x, "y": y, "r": r}
        qtype = str(rng.choice(list(self.questions)))
        return {"w": width, "h": height, "bg": _bg(rng), "shapes": [shape], "qtype": qtype}

    def answer(self, scene: Scene, qtype: str) -> str:
        return scene["shapes"][0]["colour" if qtype == "colour" else "kind"]

    def render(self, scene: Scene) -> Image.Image:
        return draw_shapes(canvas(scene["w"], scene["h"], scene["bg"]), scene["shapes"])


class Counting(Attributes):
    name = "counting"
    questions = {"count": ("1", "2", "3", "4")}
    templates = {"count": ("How many {kind}s are there?", "Count the {kind}s.")}

    def sample(self, rng: np.random.Generator, width: int, height: int) -> Scene:
        n = int(rng.integers(1, 5))
        kind = _pick(rng, SHAPES)[0]
        r = round(float(rng.uniform(0.08, 0.12)) * min(width, height), 1)
        colours = rng.choice(COLOUR_NAMES, size=n)
        shapes = [{"kind": kind, "colour": str(c), "x": x, "y": y, "r": r}
                  for c, (x, y) in zip(colours, place(rng, width, height, r, n), strict=True)]
        return {"w": width, "h": height, "bg": _bg(rng), "shapes": shapes, "qtype": "count", "slots": {"kind": kind}}

    def answer(self, scene: Scene, qtype: str) -> str:
        return str(len(scene["shapes"]))


class Spatial(Attributes):
    name = "spatial"
    questions = {"horizontal": ("left", "right"), "vertical": ("above", "below")}
    templates = {
        "horizontal": ("Is the {a} shape left or right of the {b} shape?",),
        "vertical": ("Is the {a} shape above or below the {b} shape?",),
    }

    def sample(self, rng: np.random.Generator, width: int, height: int) -> Scene:
        qtype = str(rng.choice(list(self.questions)))
        r = round(float(rng.uniform(0.1, 0.15)) * min(width, height), 1)
        axis = 0 if qtype == "horizontal" else 1
        for _ in range(100):
            pts = place(rng, width, height, r, 2)
            if abs(pts[0][axis] - pts[1][axis]) >= 2 * r + 2:
                break
        else:
            raise ValueError(f"spatial: cannot separate two shapes of size {r} in {width}x{height}")
        a, b = _pick(rng, COLOUR_NAMES, 2)
        kinds = rng.choice(SHAPES, size=2)
        shapes = [{"kind": str(k), "colour": c, "x": x, "y": y, "r": r}
                  for k, c, (x, y) in zip(kinds, (a, b), pts, strict=True)]
        return {"w": width, "h": height, "bg": _bg(rng), "shapes": shapes, "qtype": qtype, "slots": {"a": a, "b": b}}

    def qtypes(self, scene: Scene) -> list[str]:
        return [scene["qtype"]]

    def answer(self, scene: Scene, qtype: str) -> str:
        a, b = scene["shapes"]
        if qtype == "horizontal":
            return "left" if a["x"] < b["x"] else "right"
        return "above" if a["y"] < b["y"] else "below"


class TextReading(Subset):
    name = "text"
    questions = {"word": WORDS}
    templates = {"word": ("What word is written in the image?", "Read the word in the picture.")}
    knobs = ("glyph_px", "words")

    def answer_sets(self, sc: SubsetConfig) -> dict[str, tuple[str, ...]]:
        return {"word": tuple(sc.words)}

    def sample(self, rng: np.random.Generator, width: int, height: int, glyph_px: tuple[int, int] = (8, 11),
               words: tuple[str, ...] = WORDS) -> Scene:
        word = _pick(rng, words)[0]
        size = int(rng.integers(glyph_px[0], glyph_px[1] + 1))
        tw, th = text_size(word, size)
        if tw + 2 > width or th + 2 > height:
            raise ValueError(f"text: a {size}px word does not fit in {width}x{height}; enlarge the resolution range")
        x, y = int(rng.integers(1, width - tw)), int(rng.integers(1, height - th))
        return {"w": width, "h": height, "bg": _bg(rng), "word": word, "size": size, "x": x, "y": y, "qtype": "word"}

    def answer(self, scene: Scene, qtype: str) -> str:
        return scene["word"]

    def render(self, scene: Scene) -> Image.Image:
        img = canvas(scene["w"], scene["h"], scene["bg"])
        return draw_text(img, scene["word"], scene["x"], scene["y"], scene["size"])


class BarChart(Subset):
    name = "chart"
    colours = ("red", "green", "blue", "yellow")
    questions = {"tallest": colours, "shortest": colours}
    templates = {
        "tallest": ("Which colour has the tallest bar?", "What colour is the highest bar?"),
        "shortest": ("Which colour has the shortest bar?", "What colour is the lowest bar?"),
    }

    def sample(self, rng: np.random.Generator, width: int, height: int) -> Scene:
        order = [str(c) for c in rng.permutation(self.colours)]
        values = [int(v) for v in rng.choice(np.arange(1, 9), size=4, replace=False)]
        qtype = str(rng.choice(list(self.questions)))
        return {"w": width, "h": height, "bg": _bg(rng), "bars": order, "values": values, "qtype": qtype}

    def answer(self, scene: Scene, qtype: str) -> str:
        pick = np.argmax if qtype == "tallest" else np.argmin
        return scene["bars"][int(pick(scene["values"]))]

    def render(self, scene: Scene) -> Image.Image:
        w, h = scene["w"], scene["h"]
        img = canvas(w, h, scene["bg"])
        x0, y0, x1 = int(0.1 * w), int(0.92 * h), int(0.95 * w)
        top = int(0.08 * h)
        slot = (x1 - x0) / len(scene["bars"])
        shapes = []
        for i, (colour, value) in enumerate(zip(scene["bars"], scene["values"], strict=True)):
            bar_top = y0 - (y0 - top) * value / 8
            shapes.append((x0 + i * slot + 0.15 * slot, bar_top, x0 + (i + 0.85) * slot, y0, colour))
        draw = ImageDraw.Draw(img)
        draw.line((x0 - 1, top, x0 - 1, y0), fill=(60, 60, 60))
        draw.line((x0 - 1, y0, x1, y0), fill=(60, 60, 60))
        for left, upper, right, lower, colour in shapes:
            draw.rectangle((left, upper, right, lower), fill=COLOURS[colour])
        return img


class Compare(Subset):
    name = "compare"
    media = "images"
    questions = {"same_colour": ("yes", "no"), "same_shape": ("yes", "no")}
    templates = {
        "same_colour": ("Do the two images show shapes of the same colour?",),
        "same_shape": ("Do the two images show the same kind of shape?",),
    }

    def sample(self, rng: np.random.Generator, width: int, height: int) -> Scene:
        qtype = str(rng.choice(list(self.questions)))
        same = bool(rng.integers(2))
        if qtype == "same_colour":  # the asked attribute is balanced yes/no, the other varies freely
            colours = [_pick(rng, COLOUR_NAMES)[0]] * 2 if same else _pick(rng, COLOUR_NAMES, 2)
            kinds = [str(k) for k in rng.choice(SHAPES, size=2)]
        else:
            kinds = [_pick(rng, SHAPES)[0]] * 2 if same else _pick(rng, SHAPES, 2)
            colours = [str(c) for c in rng.choice(COLOUR_NAMES, size=2)]
        panels = []
        for kind, colour in zip(kinds, colours, strict=True):
            r = round(float(rng.uniform(0.2, 0.3)) * min(width, height), 1)
            (x, y), = place(rng, width, height, r, 1)
            shape = {"kind": kind, "colour": colour, "x": x, "y": y, "r": r}
            panels.append({"w": width, "h": height, "bg": _bg(rng), "shapes": [shape]})
        return {"panels": panels, "qtype": qtype}

    def answer(self, scene: Scene, qtype: str) -> str:
        key = "colour" if qtype == "same_colour" else "kind"
        a, b = (p["shapes"][0][key] for p in scene["panels"])
        return "yes" if a == b else "no"

    def render(self, scene: Scene) -> list[Image.Image]:
        return [draw_shapes(canvas(p["w"], p["h"], p["bg"]), p["shapes"]) for p in scene["panels"]]


def glyph_cell(scene: Scene, width: int, height: int) -> tuple[float, float]:
    """(mean letter width, text height) in pixels of a text scene's word once the picture is resized to
    width x height: how many pixels a reader gets per letter (the smallest legible pixel fonts are 3 x 5)."""
    text_w, text_h = text_size(scene["word"], scene["size"])
    return text_w / len(scene["word"]) * width / scene["w"], text_h * height / scene["h"]


def jitter_image(img: Image.Image, scene: Scene) -> Image.Image:
    """Apply a near-duplicate's pixel shift (`scene["jitter"]`) to a rendered picture."""
    dx, dy = scene.get("jitter", (0, 0))
    return shift(img, dx, dy, img.getpixel((0, 0)))
