"""An independent computation of what the reference (NVlabs/VILA, Dec 2024 release) does with a released checkpoint,
written from reading llava/mm_utils.py (dynamic_s2_preprocess), llava_arch.py (encode_images,
merge_features_for_dynamic_s2, merge/split_chessboard, _embed), base_projector.py (flat_square) and
encoders/ (BasicImageEncoder, TSPVideoEncoder). Plain torch on the checkpoint's own files; it shares no code with
nvila_model, so a channel permutation or a wrong feature layer there shows up as a logits mismatch."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoTokenizer, Qwen2ForCausalLM, SiglipImageProcessor, SiglipVisionModel


class ReferenceNVILA:
    def __init__(self, root: Path):
        self.top = json.loads((root / "config.json").read_text())
        self.llm = Qwen2ForCausalLM.from_pretrained(root / "llm", dtype=torch.float32).eval()
        self.tower = SiglipVisionModel.from_pretrained(root / "vision_tower", dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(root / "llm")
        self.image_processor = SiglipImageProcessor.from_pretrained(root / "vision_tower")
        self.proj = load_file(root / "mm_projector" / "model.safetensors")
        self.kind = json.loads((root / "mm_projector" / "config.json").read_text())["mm_projector_type"]
        scales = self.top["s2_scales"]
        self.scales = sorted(int(s) for s in scales.split(",")) if self.top["dynamic_s2"] else None
        encoder = json.loads(self.top["video_encoder"])
        self.pool = encoder.get("pool_sizes", [[1, 1, 1]])[0][0]
        vocab = self.tokenizer.get_vocab()
        self.image_id, self.video_id = vocab["<image>"], vocab["<vila/video>"]

    # preprocessing: llava/mm_utils.py --------------------------------------------------------------------------
    def _pixels(self, tile: Image.Image) -> torch.Tensor:
        return torch.as_tensor(self.image_processor(tile)["pixel_values"][0])

    def _cut(self, image: Image.Image, cols: int, rows: int, size: int) -> list[torch.Tensor]:
        resized = image.resize((cols * size, rows * size))
        return [self._pixels(resized.crop(((i % cols) * size, (i // cols) * size, (i % cols + 1) * size,
                                           (i // cols + 1) * size))) for i in range(cols * rows)]

    def s2_tiles(self, image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        size, scales = self.image_processor.size["height"], self.scales
        tiles = []
        for scale in scales[:-1]:
            tiles += self._cut(image, scale // scales[0], scale // scales[0], size)
        lo, hi, (w, h) = (scales[-1] // scales[0]) ** 2, self.top["max_tiles"], image.size
        ratios = sorted({(i, j) for n in range(lo, hi + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                         if lo <= i * j <= hi}, key=lambda r: r[0] * r[1])
        best, best_diff = (1, 1), float("inf")
        for r in ratios:
            diff = abs(w / h - r[0] / r[1])
            if diff < best_diff:
                best, best_diff = r, diff
            elif diff == best_diff and w * h > 0.5 * size * size * r[0] * r[1]:
                best = r
        tiles += self._cut(image, best[0], best[1], size)
        return torch.stack(tiles), (best[1], best[0])

    def image_input(self, image: Image.Image, single: bool) -> tuple[torch.Tensor, tuple[int, int] | None]:
        if self.top["image_aspect_ratio"] == "dynamic_s2" and single:  # S2 only for a prompt's one image
            return self.s2_tiles(image)
        return self._pixels(image.resize((self.image_processor.size["width"], self.image_processor.size["height"])))[
            None], None

    # model: llava_arch.py -------------------------------------------------------------------------------------
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.tower(pixels, output_hidden_states=True)
        return out.hidden_states[self.top["mm_vision_select_layer"]]  # cls_patch: every token

    @staticmethod
    def merge_chessboard(x: torch.Tensor, nh: int, nw: int) -> torch.Tensor:
        if x.dim() == 3:
            side = int(x.shape[1] ** 0.5)
            x = x.permute(0, 2, 1).reshape(x.shape[0], x.shape[2], side, side)
        b = x.shape[0] // (nh * nw)
        return torch.cat([torch.cat([x[(i * nw + j) * b:(i * nw + j + 1) * b] for j in range(nw)], dim=-1)
                          for i in range(nh)], dim=-2)

    @staticmethod
    def split_chessboard(x: torch.Tensor, nh: int, nw: int) -> torch.Tensor:
        h, w = x.shape[2] // nh, x.shape[3] // nw
        return torch.cat([x[:, :, i * h:(i + 1) * h, j * w:(j + 1) * w] for i in range(nh) for j in range(nw)])

    @staticmethod
    def flat_square(x: torch.Tensor, f: int) -> torch.Tensor:
        n, w, h, c = x.shape
        if w % f:
            x = torch.cat([x, torch.zeros(n, f - w % f, h, c)], dim=1)
            n, w, h, c = x.shape
        if h % f:
            x = torch.cat([x, torch.zeros(n, w, f - h % f, c)], dim=2)
            n, w, h, c = x.shape
        x = x.contiguous().view(n, w, h // f, c * f).permute(0, 2, 1, 3).contiguous()
        return x.view(n, h // f, w // f, c * f * f).permute(0, 2, 1, 3).contiguous()

    def project(self, x_BNC: torch.Tensor) -> torch.Tensor:
        p, side = self.proj, int(x_BNC.shape[1] ** 0.5)
        ln = lambda t, j: F.layer_norm(t, t.shape[-1:], p[f"layers.{j}.weight"], p[f"layers.{j}.bias"])  # noqa: E731
        lin = lambda t, j: F.linear(t, p[f"layers.{j}.weight"], p[f"layers.{j}.bias"])  # noqa: E731
        if self.kind == "mlp2x_gelu":
            return lin(F.gelu(lin(x_BNC, 0)), 2)
        f = 3 if self.kind == "mlp_downsample_3x3_fix" else 2
        x = self.flat_square(x_BNC.reshape(x_BNC.shape[0], side, side, -1), f)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        if f == 3:
            return lin(F.gelu(lin(ln(F.gelu(lin(ln(x, 1), 2)), 4), 5)), 7)
        return lin(F.gelu(lin(ln(x, 1), 2)), 4)

    def encode_images(self, pixels: torch.Tensor, block_sizes: list) -> list[torch.Tensor]:
        feats = self.features(pixels)
        if not self.top["dynamic_s2"]:
            return list(self.project(feats))
        merged, count = [], 0
        for block in block_sizes:
            if block is None:
                x = feats[count:count + 1]
                side = int(x.shape[1] ** 0.5)
                merged.append((x.permute(0, 2, 1).reshape(1, -1, side, side).repeat(1, len(self.scales), 1, 1),
                               (1, 1)))
                count += 1
                continue
            maps = []
            for scale in self.scales[:-1]:
                k = scale // self.scales[0]
                maps.append(self.merge_chessboard(feats[count:count + k * k], k, k))
                count += k * k
            maps.append(self.merge_chessboard(feats[count:count + block[0] * block[1]], *block))
            count += block[0] * block[1]
            size = maps[-1].shape[-2:]
            merged.append((torch.cat([F.interpolate(m.float(), size=size, mode="area") for m in maps], dim=1), block))
        out = []
        for x, block in merged:
            tiles = self.split_chessboard(x, *block)
            proj = self.project(tiles.flatten(2).transpose(1, 2))
            out.append(self.merge_chessboard(proj, *block).flatten(2)[0].T)
        return out

    def newline(self) -> torch.Tensor:
        return self.llm.model.embed_tokens(torch.tensor(self.tokenizer("\n").input_ids))

    def image_embeds(self, image: Image.Image, single: bool) -> torch.Tensor:
        pixels, block = self.image_input(image, single)
        return torch.cat([self.encode_images(pixels, [block])[0], self.newline()])  # BasicImageEncoder

    def video_embeds(self, frames: list[Image.Image]) -> torch.Tensor:
        pixels = torch.stack([self._pixels(f) for f in frames])
        feats = torch.stack(self.encode_images(pixels, [None] * len(frames)))  # [T, S, D]
        t, s = feats.shape[:2]
        side = int(s ** 0.5)
        pooled = feats.view(t, side, side, -1).view(t // self.pool, self.pool, side, side, -1).mean(1).flatten(1, 2)
        newline = self.newline()[None].expand(pooled.shape[0], -1, -1)  # TSPVideoEncoder: "\n" after each group
        return torch.cat([pooled, newline], dim=1).flatten(0, 1)

    # prompt and splice: generate_content -> tokenize_conversation -> _embed ------------------------------------
    def prompt_ids(self, question: str, media_token: str) -> torch.Tensor:
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": media_token + question}],
                                                  add_generation_prompt=True, tokenize=False)
        return torch.tensor(self.tokenizer(text).input_ids)

    @torch.no_grad()
    def logits(self, question: str, images: list | None = None, frames: list | None = None) -> torch.Tensor:
        if images:
            media = [self.image_embeds(image, len(images) == 1) for image in images]
        else:
            media = [self.video_embeds(frames)]
        ids = self.prompt_ids(question, "<image>" * len(images) if images else "<vila/video>")
        pieces, start = [], 0
        for pos, tok in enumerate(ids.tolist()):
            if tok in (self.image_id, self.video_id):
                pieces += [self.llm.model.embed_tokens(ids[start:pos]), media.pop(0)]
                start = pos + 1
        pieces.append(self.llm.model.embed_tokens(ids[start:]))
        return self.llm(inputs_embeds=torch.cat(pieces)[None]).logits[0]
