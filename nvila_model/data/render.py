"""Drawing primitives and byte-reproducible writers (PNG via PIL, MP4 via PyAV) for the synthetic corpus."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUNDS: tuple[tuple[int, int, int], ...] = ((250, 250, 250), (232, 232, 232), (214, 214, 220))
INK: tuple[int, int, int] = (20, 20, 20)
# Byte-reproducible H.264 of the synthetic videos (see write_mp4 for why MB-tree is off).
X264_OPTIONS = {"threads": "1", "preset": "veryfast", "crf": "10", "x264-params": "mbtree=0"}


def canvas(width: int, height: int, bg: list[int] | tuple[int, ...]) -> Image.Image:
    """A solid-colour RGB image."""
    return Image.new("RGB", (int(width), int(height)), tuple(bg))


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, colour: str, x: float, y: float, r: float) -> None:
    """Draw a filled shape of half-size `r` centred on (x, y); the centre pixel is always inside it."""
    fill = COLOURS[colour]
    if kind == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif kind == "square":
        draw.rectangle((x - r, y - r, x + r, y + r), fill=fill)
    elif kind == "triangle":
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    else:
        raise ValueError(f"unknown shape kind {kind!r}; known: {SHAPES}")


def draw_shapes(img: Image.Image, shapes: list[dict]) -> Image.Image:
    """Draw every `{kind, colour, x, y, r}` shape onto `img` (in place) and return it."""
    draw = ImageDraw.Draw(img)
    for s in shapes:
        draw_shape(draw, s["kind"], s["colour"], s["x"], s["y"], s["r"])
    return img


def draw_text(img: Image.Image, text: str, x: int, y: int, size: int, ink: tuple[int, ...] = INK) -> Image.Image:
    """Draw `text` with Pillow's embedded font at pixel size `size` (same glyphs on every machine)."""
    font = ImageFont.load_default(size=size)
    ImageDraw.Draw(img).text((x, y), text, font=font, fill=tuple(ink))
    return img


def text_size(text: str, size: int) -> tuple[int, int]:
    """Width and height in pixels that `draw_text` will cover."""
    left, top, right, bottom = ImageFont.load_default(size=size).getbbox(text)
    return int(right), int(bottom)


def shift(img: Image.Image, dx: int, dy: int, bg: list[int] | tuple[int, ...]) -> Image.Image:
    """Translate the picture by (dx, dy) pixels, filling the uncovered border with the background."""
    if dx == 0 and dy == 0:
        return img
    out = canvas(img.width, img.height, bg)
    out.paste(img, (int(dx), int(dy)))
    return out


def shift_frames(frames_FHW3: np.ndarray, dx: int, dy: int, bg: list[int] | tuple[int, ...]) -> np.ndarray:
    """`shift` applied to every frame of a uint8 video array."""
    if dx == 0 and dy == 0:
        return frames_FHW3
    out_FHW3 = np.empty_like(frames_FHW3)
    out_FHW3[:] = np.asarray(bg, dtype=np.uint8)
    _, h, w, _ = frames_FHW3.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out_FHW3[:, yd, xd] = frames_FHW3[:, ys, xs]
    return out_FHW3


def save_png(img: Image.Image, path: Path) -> None:
    """Write a PNG with no metadata, so equal pixels give equal bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=False, compress_level=6)


def write_mp4(frames_FHW3: np.ndarray, path: Path, fps: int = 8) -> None:
    """Encode uint8 RGB frames [F, H, W, 3] (even H and W) as H.264 MP4, byte-reproducibly.

    libx264 with one thread, a fixed preset and no MB-tree is deterministic, and the mp4 muxer writes no creation
    time unless asked, so the same frames give the same file with the same PyAV / FFmpeg build. MB-tree (on in
    every preset from veryfast up) is not: on small frames such as 56x42 its lookahead gave a different bitstream in
    about one encode of sixteen (PyAV 18.1, libx264 asm on; with asm=0 or mbtree=0 every encode matched), so one
    video of a regenerated corpus could differ from the first run's and change the corpus's DVC hash.
    """
    num_frames, height, width, _ = frames_FHW3.shape
    if height % 2 or width % 2:
        raise ValueError(f"{path}: video frames must have even sides for yuv420p, got {width}x{height}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options=X264_OPTIONS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame_HW3 in frames_FHW3:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_HW3), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert num_frames > 0
