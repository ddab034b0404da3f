"""What the import can not reproduce faithfully is refused with one line naming the field or file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from official_fixture import write_official
from safetensors.torch import load_file, save_file

from nvila_model.official import import_official

TSP = "llava.model.encoders.TSPVideoEncoder"
TOP_REFUSALS = [
    ({"mm_vision_select_feature": "patch"}, "mm_vision_select_feature"),
    ({"image_aspect_ratio": "pad"}, "image_aspect_ratio"),
    ({"image_aspect_ratio": "dynamic"}, "image_aspect_ratio"),
    ({"s2_resize_output_to_scale_idx": 0}, "s2_resize_output_to_scale_idx"),
    ({"s2_scales": "40,20,60"}, "s2_scales"),
    ({"s2_scales": "24,48,72"}, "s2_scales"),
    ({"video_encoder": json.dumps({"_target_": TSP, "pool_sizes": [[2, 2, 2]]})}, "video_encoder"),
    ({"video_encoder": json.dumps({"_target_": TSP, "pool_sizes": [[2, 1, 1]], "sep_tokens": "\n"})},
     "video_encoder"),
    ({"image_encoder": json.dumps({"_target_": "llava.model.encoders.BasicImageEncoder", "start_tokens": "<i>"})},
     "image_encoder"),
    ({"ps3": True}, "ps3"),
    ({"s2": True}, "s2"),
    ({"fps": 2.0}, "fps"),
    ({"vision_resolution": 40}, "vision_resolution"),
    ({"mm_use_im_start_end": True}, "mm_use_im_start_end"),
    ({"model_type": "llava_topdown_llama"}, "model_type"),
    ({"mm_hidden_size": 64}, "mm_hidden_size"),
    ({"hidden_size": 64}, "hidden_size"),
    ({"chat_template": "vicuna_v1"}, "chat_template"),
    ({"mm_projector": "mlp_downsample_3x3_fix"}, "mm_projector"),
    ({"model_dtype": "torch.int8"}, "model_dtype"),
    ({"llm_cfg": "Qwen/Qwen2.5-7B-Instruct"}, "llm_cfg"),
]


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _edit_projector(src: Path, key: str, tensor=None) -> None:
    state = load_file(src / "mm_projector" / "model.safetensors")
    if tensor is None:
        del state[key]
    else:
        state[key] = tensor
    save_file(state, src / "mm_projector" / "model.safetensors")


def _rename_video_token(src: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        path = src / "llm" / name
        path.write_text(path.read_text().replace("<vila/video>", "<vila/clip>"))


def _drop_vision_tensor(src: Path) -> None:
    path = src / "vision_tower" / "model.safetensors"
    state = load_file(path)
    del state["vision_model.encoder.layers.0.mlp.fc1.weight"]
    save_file(state, path)


def _not_chatml(src: Path) -> None:
    template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    jinja = src / "llm" / "chat_template.jinja"
    if jinja.is_file():
        jinja.write_text(template)
    else:
        _edit_json(src / "llm" / "tokenizer_config.json", chat_template=template)


FILE_REFUSALS = [
    (lambda s: (_edit_json(s / "mm_projector" / "config.json", mm_projector_type="mlp_downsample_3x3_s2"),
                _edit_json(s / "config.json", mm_projector="mlp_downsample_3x3_s2")), "mm_projector_type"),
    (lambda s: shutil.rmtree(s / "vision_tower"), "vision_tower"),
    (lambda s: (s / "mm_projector" / "model.safetensors").unlink(), "model.safetensors"),
    (lambda s: _edit_projector(s, "layers.4.bias"), "layers.4.bias"),
    (lambda s: _edit_projector(s, "layers.2.weight", load_file(s / "mm_projector" / "model.safetensors")[
        "layers.2.weight"][:, :-4].contiguous()), "layers.2.weight"),
    (lambda s: _edit_projector(s, "layers.3.weight", load_file(s / "mm_projector" / "model.safetensors")[
        "layers.4.weight"]), "layers.3.weight"),
    (lambda s: _edit_json(s / "vision_tower" / "preprocessor_config.json", image_mean=[0.48, 0.45, 0.40]),
     "image_mean"),
    (lambda s: _edit_json(s / "vision_tower" / "preprocessor_config.json", size={"height": 24, "width": 24}),
     "size"),
    (lambda s: _edit_json(s / "vision_tower" / "preprocessor_config.json", resample=2), "resample"),
    (lambda s: _edit_json(s / "llm" / "config.json", model_type="llama"), "model_type"),
    (_rename_video_token, "<vila/video>"),
    (_drop_vision_tensor, "missing_keys"),
    (_not_chatml, "chat_template"),
    (lambda s: (s / "config.json").unlink(), "config.json"),
]


def _assert_one_line_refusal(src: Path, out: Path, needle: str) -> None:
    with pytest.raises(ValueError) as refused:
        import_official(src, out)
    message = str(refused.value)
    assert needle in message and "\n" not in message.replace("'\\n'", ""), message
    assert not (out / "model.safetensors").exists()


@pytest.mark.parametrize("overrides,needle", TOP_REFUSALS, ids=[n for _, n in TOP_REFUSALS])
def test_top_level_field_refused(tmp_path, overrides, needle):
    _assert_one_line_refusal(write_official(tmp_path / "src", **overrides), tmp_path / "out", needle)


@pytest.mark.parametrize("edit,needle", FILE_REFUSALS, ids=[n for _, n in FILE_REFUSALS])
def test_layout_problem_refused(tmp_path, edit, needle):
    src = write_official(tmp_path / "src")
    edit(src)
    _assert_one_line_refusal(src, tmp_path / "out", needle)


def test_cli_prints_one_error_line(tmp_path, capsys, monkeypatch):
    from flows.cli import main

    src = write_official(tmp_path / "src", ps3=True)
    monkeypatch.setattr("sys.argv", ["nvila", "import", str(src), str(tmp_path / "out")])
    capsys.readouterr()  # drop what writing the fixture printed
    with pytest.raises(SystemExit) as exited:
        main()
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and err.startswith("nvila: error: config.json ps3=True") and "\n" not in err
