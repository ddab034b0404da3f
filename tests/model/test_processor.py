"""Processor: label masking, media placement, image conversion, video frames, bad inputs."""

import numpy as np
import pytest
from PIL import Image

from nvila_model.processor import IGNORE_INDEX
from nvila_model.video import frame_indices, temporal_pool


def test_labels_supervise_only_assistant_turns(processor):
    conv = [{"from": "human", "value": "<image>\nWhat colour is the square?"}, {"from": "gpt", "value": "red"},
            {"from": "human", "value": "How many circles are there?"}, {"from": "gpt", "value": "3"}]
    feats = processor.encode(conv, images=[Image.new("RGB", (40, 40))])
    supervised = feats["labels"][feats["labels"] != IGNORE_INDEX].tolist()
    assert processor.tokenizer.decode(supervised) == "red<|im_end|>3<|im_end|>"
    ids = feats["input_ids"].tolist()
    # media sits at the start of the first user turn
    user_start = processor.tokenizer("<|im_start|>user\n", add_special_tokens=False)["input_ids"]
    at = next(i for i in range(len(ids)) if ids[i:i + len(user_start)] == user_start) + len(user_start)
    assert ids[at] == processor.config.image_token_id


def test_text_matches_chat_template(processor):
    conv = [{"from": "human", "value": "How many circles are there?"}, {"from": "gpt", "value": "2"}]
    feats = processor.encode(conv)
    rendered = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": conv[0]["value"]}, {"role": "assistant", "content": "2"}], tokenize=False)
    assert processor.tokenizer.decode(feats["input_ids"]) == rendered


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_non_rgb_images_are_converted(processor, mode):
    img = Image.new(mode, (20, 30))
    tiles, row = processor.preprocess_image(img, single_image=True)
    assert tiles.shape[1:] == (3, 32, 32) and row[0] == 0


def test_multi_image_samples_use_one_tile_each(processor):
    conv = [{"from": "human", "value": "<image>\n<image>\nSame colour?"}, {"from": "gpt", "value": "red"}]
    feats = processor.encode(conv,
                             images=[Image.new("RGB", (100, 30)), Image.new("RGB", (30, 100))])
    assert feats["pixel_values"].shape[0] == 2 and feats["media_layout"][:, 0].tolist() == [1, 1]


def test_zero_size_image_is_an_error(processor):
    with pytest.raises(ValueError, match="zero size"):
        processor.preprocess_image(Image.new("RGB", (0, 10)), single_image=True)


def test_video_frames_and_pooling():
    assert frame_indices(80, 8) == [5, 15, 25, 35, 45, 55, 65, 75]
    assert frame_indices(3, 4) == [0, 1, 1, 2]  # segment centres 0.375, 1.125, 1.875, 2.625
    with pytest.raises(ValueError, match="no frames"):
        frame_indices(0, 8)
    import torch

    x = torch.arange(4 * 2 * 1, dtype=torch.float32).reshape(4, 2, 1)
    assert temporal_pool(x, 2).squeeze(-1).tolist() == [[1.0, 2.0], [5.0, 6.0]]
    with pytest.raises(ValueError, match="multiple of video_pool_size"):
        temporal_pool(x, 3)


def test_video_frame_count_not_divisible_is_an_error(processor):
    with pytest.raises(ValueError, match="not divisible by video_pool_size"):
        processor.encode([{"from": "human", "value": "<video>\nWhere?"}, {"from": "gpt", "value": "left"}],
                         video=np.zeros((5, 8, 8, 3), np.uint8))


def test_turns_must_alternate(processor):
    with pytest.raises(ValueError, match="alternate"):
        processor.encode([{"from": "gpt", "value": "hi"}])


def test_a_processor_tokenizes_a_repeated_text_and_sizes_an_image_once_and_still_pickles(processor, monkeypatch):
    """The memos: a corpus repeats its template pieces, questions, answers and image sizes, so a processor asks the
    tokenizer and the Dynamic-S2 grid search once per distinct text and size; a copy that crossed a pickle (a
    DataLoader worker, a Ray actor) encodes the same."""
    import pickle

    import torch

    import nvila_model.media_tokens as media_tokens

    conv = [{"from": "human", "value": "<image>\nWhat colour is the square?"}, {"from": "gpt", "value": "red"}]
    image = Image.new("RGB", (90, 40), (200, 30, 30))
    first = processor.encode(conv, images=[image])
    texts, grids = [], []
    tokenizer_call = type(processor.tokenizer).__call__
    monkeypatch.setattr(type(processor.tokenizer), "__call__",
                        lambda tok, text, **kw: texts.append(text) or tokenizer_call(tok, text, **kw))
    choose_grid = media_tokens.choose_grid
    monkeypatch.setattr(media_tokens, "choose_grid", lambda *a: grids.append(a[:2]) or choose_grid(*a))
    again = processor.encode(conv, images=[image])
    assert texts == [] and grids == []
    other = processor.encode([{"from": "human", "value": "<image>\nAnd now?"}, {"from": "gpt", "value": "red"}],
                             images=[Image.new("RGB", (40, 90))])
    assert texts == ["And now?<|im_end|>\n"] and set(grids) == {(40, 90)}
    copy = pickle.loads(pickle.dumps(processor))
    for sample in (again, copy.encode(conv, images=[image])):
        assert all(torch.equal(first[k], sample[k]) for k in first)
    assert other["media_layout"][0, 1:3].tolist() == list(reversed(processor.image_grid(40, 90)))
