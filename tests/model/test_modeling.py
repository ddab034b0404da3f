"""The NVILA model: token counts, save/load, Auto classes, generation with the KV cache, learning, presets."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, Qwen2ForCausalLM, SiglipVisionModel

from nvila_model.modeling import NVILAForConditionalGeneration
from nvila_model.presets import PRESETS, build_config


def _sample(processor, size=(90, 40)):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    return processor.encode([{"from": "human", "value": "<image>\nWhat colour is the square?"},
                             {"from": "gpt", "value": "red"}], images=[img])


@pytest.mark.parametrize("size", [(150, 40), (40, 150), (64, 64), (1, 1), (33, 97)])
def test_s2_token_count_matches_model(processor, tiny_model, size):
    feats = _sample(processor, size)
    media = tiny_model.encode_media(feats["pixel_values"], feats["media_layout"])
    assert media[0].shape[0] == processor.num_image_tokens(*size)
    cols, rows = processor.image_grid(*size)
    assert processor.num_image_tokens(*size) == cols * rows * 16  # tiny: 8x8 patches -> 4x4 tokens per tile
    assert int((feats["input_ids"] == tiny_model.config.image_token_id).sum()) == media[0].shape[0]


@pytest.mark.parametrize("projector,per_tile", [("none", 64), ("mlp_downsample", 16), ("mlp_downsample_3x3_fix", 9)])
def test_token_counts_per_projector(tokenizer, projector, per_tile):
    from nvila_model.processor import NVILAProcessor

    config = build_config("tiny", projector=projector, dynamic_s2=False)
    model = NVILAForConditionalGeneration(config).eval()
    conv = [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "red"}]
    feats = NVILAProcessor(tokenizer, config).encode(conv, images=[Image.new("RGB", (50, 20))])
    assert model.encode_media(feats["pixel_values"], feats["media_layout"])[0].shape == (per_tile, 128)
    assert model(**{k: v.unsqueeze(0) if k in ("input_ids", "labels") else v for k, v in feats.items()}).loss.isfinite()


def test_video_tokens_pooled_and_newline_after_each_group(processor, tiny_model):
    frames = np.random.default_rng(1).integers(0, 255, (8, 20, 30, 3), dtype=np.uint8)
    feats = processor.encode([{"from": "human", "value": "<video>\nWhich way?"}, {"from": "gpt", "value": "left"}],
                             video=frames)
    tokens = tiny_model.encode_media(feats["pixel_values"], feats["media_layout"])[0]
    assert tokens.shape[0] == 8 // 2 * 16 == processor.num_video_tokens(8)
    ids = feats["input_ids"].tolist()
    first = ids.index(tiny_model.config.video_token_id)
    assert ids[first + 16] == processor.newline_id and ids[first + 17] == tiny_model.config.video_token_id


def test_centred_visual_tokens_are_each_items_tokens_less_their_mean(processor, tiny_model):
    """The tiny preset centres each media item's tokens (an image, a video), the paper's presets do not; the
    tokens are otherwise the same computation."""
    frames = np.random.default_rng(1).integers(0, 255, (8, 20, 30, 3), dtype=np.uint8)
    items = [_sample(processor), _sample(processor, (40, 150)),
             processor.encode([{"from": "human", "value": "<video>\nWhich way?"}, {"from": "gpt", "value": "left"}],
                              video=frames)]
    pixel_values = torch.cat([f["pixel_values"] for f in items])
    layout = torch.cat([f["media_layout"].reshape(-1, 4) for f in items])
    assert tiny_model.config.centering == "item"
    assert all(PRESETS[name]().centering == "none" for name in ("nvila-8b", "nvila-lite-8b"))
    with torch.no_grad():
        centred = tiny_model.encode_media(pixel_values, layout)
        raw = tiny_model.encode_media(pixel_values, layout, centre=False)
    for tokens_TD, raw_TD in zip(centred, raw, strict=True):
        torch.testing.assert_close(tokens_TD.mean(0), torch.zeros(tokens_TD.shape[1]), atol=1e-6, rtol=0)
        torch.testing.assert_close(tokens_TD, raw_TD - raw_TD.mean(0))
        assert raw_TD.mean(0).norm() > 0.1  # uncentred, the tokens share a mean


def _media_batch(processor, seed):
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in ((90, 40), (32, 32))]
    feats = processor.encode([{"from": "human", "value": "<image>\n<image>\nWhat colour is the square?"},
                              {"from": "gpt", "value": "red"}], images=images)
    return feats["pixel_values"], feats["media_layout"].reshape(-1, 4)


def test_running_centring_subtracts_the_batch_mean_in_training_and_its_running_average_at_inference(processor):
    """`center_visual_tokens="running"`: training subtracts the micro-batch's mean token (each item keeps its own
    mean) and averages those means, the first 1/MOMENTUM of them plainly; inference subtracts the average and
    leaves it alone, as does the idle term of a text-only batch."""
    from nvila_model.modeling import RunningCentre

    torch.manual_seed(0)
    model = NVILAForConditionalGeneration(build_config("tiny", center_visual_tokens="running")).train()
    centre = model.token_centre
    batches = [_media_batch(processor, seed) for seed in (0, 1)]
    means = []
    for pixel_values, layout in batches:
        raw = model.encode_media(pixel_values, layout, centre=False)
        centred = model.encode_media(pixel_values, layout)
        batch_mean = torch.cat(raw).mean(0)
        means.append(batch_mean.detach())
        for tokens_TD, raw_TD in zip(centred, raw, strict=True):
            torch.testing.assert_close(tokens_TD, raw_TD - batch_mean)
        assert min(t.mean(0).norm() for t in centred) > 1e-3  # not each item's own mean
    assert int(centre.updates) == 2
    torch.testing.assert_close(centre.mean, (means[0] + means[1]) / 2)
    centre.updates.fill_(500)  # past the start: an exponential average
    before = centre.mean.clone()
    model.encode_media(*batches[0])
    torch.testing.assert_close(centre.mean, before + RunningCentre.MOMENTUM * (means[0] - before))

    model.eval()
    before = centre.mean.clone()
    with torch.no_grad():
        centred = model.encode_media(*batches[1])
        raw = model.encode_media(*batches[1], centre=False)
    for tokens_TD, raw_TD in zip(centred, raw, strict=True):
        torch.testing.assert_close(tokens_TD, raw_TD - before)
    model.train().idle_media_term(torch.zeros(1))
    assert torch.equal(centre.mean, before) and int(centre.updates) == 501


def test_running_centring_passes_no_gradient_along_the_shared_direction(processor):
    """The batch mean is differentiated through (as BatchNorm's is): the projector's last bias shifts every token
    alike, so whatever the loss, it gets no gradient; with the mean detached it would."""
    torch.manual_seed(0)
    model = NVILAForConditionalGeneration(build_config("tiny", center_visual_tokens="running")).train()
    tokens_ND = torch.cat(model.encode_media(*_media_batch(processor, 0)))
    (tokens_ND * torch.randn_like(tokens_ND)).sum().backward()
    bias_grad = model.projector.layers[-1].bias.grad
    assert bias_grad.abs().max() < 1e-4 and model.projector.layers[-1].weight.grad.abs().max() > 1e-2


def test_running_centring_saves_and_loads_its_average(tmp_path, processor):
    model = NVILAForConditionalGeneration(build_config("tiny", center_visual_tokens="running")).train()
    model.encode_media(*_media_batch(processor, 0))
    model.save_pretrained(tmp_path)
    loaded = NVILAForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.config.centering == "running" and int(loaded.token_centre.updates) == 1
    assert torch.equal(loaded.token_centre.mean, model.token_centre.mean) and loaded.token_centre.mean.norm() > 0
    with pytest.raises(ValueError, match="center_visual_tokens 'batch' unknown"):
        build_config("tiny", center_visual_tokens="batch")


def test_running_centring_keeps_its_average_in_fp32_when_the_model_is_bf16(tmp_path, processor):
    """Loaded in bf16 (GPU inference) or trained under DeepSpeed bf16, the running average stays fp32: it is
    subtracted unrounded, and a batch mean close to a large average still moves it (in bf16, 8.0 + 0.1 * 0.2
    rounds back to 8.0)."""
    torch.manual_seed(0)
    model = NVILAForConditionalGeneration(build_config("tiny", center_visual_tokens="running"))
    average = 8.0 + torch.rand_like(model.token_centre.mean) / 16  # finer than bf16 resolves at 8
    model.token_centre.mean.copy_(average)
    model.save_pretrained(tmp_path)
    loaded = NVILAForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert loaded.projector.layers[-1].weight.dtype == torch.bfloat16
    assert loaded.token_centre.mean.dtype == torch.float32 and torch.equal(loaded.token_centre.mean, average)

    batch = _media_batch(processor, 0)
    pixel_values = batch[0].to(torch.bfloat16)
    with torch.no_grad():
        raw = torch.cat(loaded.encode_media(pixel_values, batch[1], centre=False))
        centred = torch.cat(loaded.encode_media(pixel_values, batch[1]))
    assert centred.dtype == torch.bfloat16
    assert torch.equal(centred, (raw.float() - average).to(torch.bfloat16))

    with torch.no_grad():  # tokens near 8, where a 0.02 step is below bf16's resolution
        loaded.projector.layers[-1].bias += 8.0
        raw = torch.cat(loaded.encode_media(pixel_values, batch[1], centre=False))
    assert raw.float().mean(0).min() > 4
    loaded.train()
    loaded.token_centre.updates.fill_(500)
    loaded.token_centre.mean.copy_(raw.float().mean(0) - 0.2)  # the batch's mean 0.2 above the average
    before = loaded.token_centre.mean.clone()
    loaded.encode_media(pixel_values, batch[1])
    torch.testing.assert_close(loaded.token_centre.mean - before, torch.full_like(before, 0.02), atol=2e-3, rtol=0)

    from deepspeed.runtime.keep_in_fp32 import buffers_to_keep_in_fp32, keep_in_fp32_pattern

    # what DeepSpeed's engine keeps in fp32 under bf16 with its default `keep_in_fp32_modules: auto`
    pattern = keep_in_fp32_pattern(model, "auto", torch.bfloat16)
    assert [b.data_ptr() for b in buffers_to_keep_in_fp32(model, pattern)] == [model.token_centre.mean.data_ptr()]


def test_media_backward_cuts_the_tower_gradient_once_not_per_item(processor, tiny_model):
    """Each item's tiles come from one split of the tower's output: a slice per item would write a zero gradient
    the size of all tiles and add into it, once per item. The features must equal a per-item encode."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = []  # (op, shape of its output)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.calls.append((func.overloadpacket.__name__, tuple(getattr(out, "shape", ()))))
            return out

    frames = np.random.default_rng(1).integers(0, 255, (8, 20, 30, 3), dtype=np.uint8)
    items = [_sample(processor, size) for size in [(150, 40), (64, 64), (33, 97)]]
    items.append(processor.encode([{"from": "human", "value": "<video>\nWhich way?"}, {"from": "gpt", "value": "l"}],
                                  video=frames))
    pixel_values = torch.cat([f["pixel_values"] for f in items])
    layout = torch.cat([f["media_layout"].reshape(-1, 4) for f in items])
    tokens = tiny_model.encode_media(pixel_values, layout)
    ops = Ops()
    with ops:
        torch.cat(tokens).square().sum().backward()
    every_tile = (pixel_values.shape[0], *tiny_model.vision_features(pixel_values[:1]).shape[1:])
    writes = [op for op, shape in ops.calls if shape == every_tile]
    assert "slice_backward" not in writes and writes.count("cat") == 1, writes
    tiny_model.zero_grad(set_to_none=True)
    with torch.no_grad():
        alone = [tiny_model.encode_media(f["pixel_values"], f["media_layout"].reshape(-1, 4))[0] for f in items]
    for together, single in zip(tokens, alone, strict=True):
        torch.testing.assert_close(together.detach(), single)


def test_save_load_reproduces_logits_and_auto_class(tmp_path, processor, tiny_model):
    batch = processor.pad([_sample(processor)])
    tiny_model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, NVILAForConditionalGeneration)
    with torch.no_grad():
        assert torch.equal(tiny_model(**batch).logits, loaded(**batch).logits)
    from nvila_model.processor import NVILAProcessor

    conv = [{"from": "human", "value": "<image>\nWhat colour is the square?"}, {"from": "gpt", "value": "red"}]
    again = NVILAProcessor.from_pretrained(tmp_path).encode(conv, images=[Image.new("RGB", (90, 40))])
    assert torch.equal(again["input_ids"], _sample(processor)["input_ids"])


def test_from_components_loads_local_pretrained_parts(tmp_path, tiny_config):
    torch.manual_seed(1)
    SiglipVisionModel(tiny_config.vision_config).save_pretrained(tmp_path / "vision")
    Qwen2ForCausalLM(tiny_config.text_config).save_pretrained(tmp_path / "llm")
    model = NVILAForConditionalGeneration.from_components(tiny_config, tmp_path / "vision", tmp_path / "llm")
    ref = SiglipVisionModel.from_pretrained(tmp_path / "vision")
    assert torch.equal(model.vision_tower.embeddings.patch_embedding.weight,
                       ref.embeddings.patch_embedding.weight)


def test_cached_and_uncached_greedy_generation_agree(processor, tiny_model):
    red = Image.new("RGB", (70, 30), "red")
    prompts = [processor.encode_prompt("<image>\nWhat colour is the square?", images=[red]),
               processor.encode_prompt("How many circles are there?")]
    batch = processor.pad(prompts, padding_side="left")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cached = tiny_model.generate(**batch, max_new_tokens=8, do_sample=False)
        uncached = tiny_model.generate(**batch, max_new_tokens=8, do_sample=False, use_cache=False)
        tiny_model(**processor.pad([_sample(processor)]))  # a training-style forward with labels
    assert torch.equal(cached, uncached)
    # the KV cache travels under transformers' current name (`cache`): no deprecation warning at every step
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]


def test_loss_falls_when_overfitting_one_batch(processor, tiny_model):
    batch = processor.pad([_sample(processor), processor.encode([{"from": "human", "value": "How many?"},
                                                                 {"from": "gpt", "value": "3"}])])
    tiny_model.train()
    opt = torch.optim.AdamW(tiny_model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = tiny_model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


@pytest.mark.parametrize("num_items", [None, 7])
def test_training_loss_on_supervised_positions_equals_the_llms_full_loss(processor, tiny_model, num_items):
    """In training the LM head runs on the answer positions only; loss and every gradient equal the LLM's own loss
    over all positions, for packed rows (two samples in a row) and with the Trainer's `num_items_in_batch`."""
    from nvila_model.data.collate import PackingCollator, model_inputs

    frames = np.random.default_rng(2).integers(0, 255, (8, 20, 30, 3), dtype=np.uint8)
    video = processor.encode([{"from": "human", "value": "<video>\nWhich way?"}, {"from": "gpt", "value": "left"}],
                             video=frames)
    batch = model_inputs(PackingCollator()([_sample(processor), video, _sample(processor)]))
    extra = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    tiny_model.train()

    def loss_and_grads(full: bool):
        tiny_model.zero_grad()
        if full:  # what the LLM computes itself: logits at every position, its causal-LM loss
            embeds = tiny_model.embed(batch["input_ids"], batch["pixel_values"], batch["media_layout"])
            out = tiny_model.language_model(inputs_embeds=embeds, position_ids=batch["position_ids"],
                                            labels=batch["labels"], use_cache=False, **extra)
        else:
            out = tiny_model(**batch, **extra)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None}

    (sparse, sparse_grads), (full, full_grads) = loss_and_grads(False), loss_and_grads(True)
    targets = int((batch["labels"][:, 1:] != -100).sum())
    assert sparse.logits.shape == (targets, tiny_model.config.text_config.vocab_size) and targets > 0
    torch.testing.assert_close(sparse.loss, full.loss)
    assert sparse_grads.keys() == full_grads.keys() and any(n.startswith("vision_tower") for n in sparse_grads)
    for name, grad in full_grads.items():
        torch.testing.assert_close(sparse_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_media_marker_mismatch_is_a_clear_error(processor, tiny_model):
    with pytest.raises(ValueError, match="2 <image> and 0 <video> markers but 1 images"):
        processor.encode([{"from": "human", "value": "<image><image>\nSame?"}, {"from": "gpt", "value": "yes"}],
                         images=[Image.new("RGB", (8, 8))])
    feats = _sample(processor)
    with pytest.raises(ValueError, match="placeholders"):
        tiny_model(input_ids=feats["input_ids"][None, :-20], pixel_values=feats["pixel_values"],
                   media_layout=feats["media_layout"])


def test_presets_load_and_tiny_is_small():
    assert set(PRESETS) == {"tiny", "small", "gpu-check", "nvila-8b", "nvila-lite-8b"}
    for name in ("tiny", "small"):
        model = NVILAForConditionalGeneration(build_config(name))
        assert sum(p.numel() for p in model.parameters()) < (5e6 if name == "tiny" else 2e7)
    with pytest.raises(ValueError, match="unknown model preset"):
        build_config("huge")
    with pytest.raises(ValueError, match="unknown model override"):
        build_config("tiny", not_a_field=1)


@pytest.mark.parametrize("name,projector_params", [("nvila-8b", 62.4e6), ("nvila-lite-8b", 372.6e6)])
def test_paper_presets_on_meta_device(name, projector_params):
    config = build_config(name)
    with torch.device("meta"):
        model = NVILAForConditionalGeneration(config)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 4.0e8 < count(model.vision_tower) < 4.3e8        # SigLIP so400m without its pooling head
    assert 7.5e9 < count(model.language_model) < 7.7e9      # Qwen2.5-7B
    assert count(model.projector) == pytest.approx(projector_params, rel=1e-3)
    assert config.projector_in_channels == 3 * 1152
    # an 800x2000 image: the 2x5 grid of 448 tiles gives 10 * tokens_per_tile tokens
    assert config.tokens_per_tile * 10 == (2560 if name == "nvila-8b" else 1210)


def test_gpu_check_preset_is_hundreds_of_millions_with_fp8_and_awq_sizes():
    config = build_config("gpu-check")
    with torch.device("meta"):
        model = NVILAForConditionalGeneration(config)
    assert 3e8 < sum(p.numel() for p in model.parameters()) < 4e8
    linears = [m for n, m in model.language_model.model.layers.named_modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.in_features % 128 == 0 and m.out_features % 64 == 0 for m in linears)
    assert config.tokens_per_tile == 49


def test_sub_config_overrides_rebuild_derived_fields():
    # setting num_hidden_layers on a built Qwen2Config left 2 layer types for 4 layers: the model did not build
    config = build_config("tiny", **{"text.num_hidden_layers": 4, "vision.num_hidden_layers": 3})
    assert config.text_config.layer_types == ["full_attention"] * 4
    model = NVILAForConditionalGeneration(config)
    assert len(model.language_model.model.layers) == 4 and len(model.vision_tower.encoder.layers) == 3
    assert config.text_config.pad_token_id == build_config("tiny").text_config.pad_token_id, "other fields kept"


def test_config_validation_errors():
    with pytest.raises(ValueError, match="not divisible by video_pool_size"):
        build_config("tiny", num_video_frames=6, video_pool_size=4)
    with pytest.raises(ValueError, match="heads"):
        build_config("tiny", **{"vision.num_attention_heads": 5})
    with pytest.raises(ValueError, match="s2_scales"):
        build_config("tiny", s2_scales=[32, 48])
