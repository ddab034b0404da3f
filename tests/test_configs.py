"""Every shipped params file loads key by key through its config class; bad settings are one line each."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml

from flows.config import check_params
from nvila_model.params import ORCHESTRATION_KEYS, library_keys, load_config, load_params, read_params
from nvila_model.presets import PRESETS, build_config
from nvila_model.train.config import ModelParams

REPO = Path(__file__).resolve().parents[1]
SHIPPED = [REPO / "params.yaml", *sorted((REPO / "configs/recipes").glob("*.yaml"))]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_key_of_every_shipped_params_file_loads(path):
    configs = load_params(path)
    assert set(read_params(path)) - set(ORCHESTRATION_KEYS) <= set(configs)
    model = configs["model"]
    assert build_config(model.preset, **model.overrides).tokens_per_tile > 0


def test_params_yaml_passes_the_whole_file_check():
    data = check_params(REPO / "params.yaml")
    assert data["prune"]["keep_ratio"] == read_params(REPO / "params.yaml")["prune"]["keep_ratio"]


def test_model_presets_are_the_library_presets():
    assert set(typing.get_args(typing.get_type_hints(ModelParams)["preset"])) == set(PRESETS)


def _bad(tmp_path: Path, **edits) -> Path:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    for dotted, value in edits.items():
        node = data
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_problem_is_one_line_naming_file_key_and_allowed_values(tmp_path):
    path = _bad(tmp_path, image_sft__max_stepz=3, prune__keep_ratio=1.5, video_sft__precision="fp16",
                bogus={"a": 1}, quantize__llm__group_size=7, vision_pretrain__lr={"vision_tower": 1e-4})
    with pytest.raises(ValueError) as info:
        check_params(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 6, lines
    assert all(line.startswith(f"{path}: ") for line in lines)
    text = str(info.value)
    assert "image_sft.max_stepz: unknown key; allowed: [" in text and "'max_steps'" in text
    assert "prune.keep_ratio: Input should be less than or equal to 1 (got 1.5)" in text
    assert "video_sft.precision: Input should be 'auto', 'fp32', 'bf16' or 'fp8'" in text
    assert "bogus: unknown top-level key; allowed: [" in text
    assert "group_size must be 32, 64 or 128" in text
    assert "vision_pretrain: lr must give one learning rate per trained module" in text


def test_types_are_checked_and_numbers_in_strings_read_as_numbers(tmp_path):
    with pytest.raises(ValueError, match=r"image_sft\.batch_size: Input should be a valid integer"):
        check_params(_bad(tmp_path, image_sft__batch_size="many"))
    data = check_params(REPO / "params.yaml", {"image_sft.lr.language_model": "1e9"})
    assert load_params(REPO / "params.yaml", data=data)["image_sft"].lr["language_model"] == 1e9


def test_overrides_are_checked_like_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"prune\.keep_ratio: Input should be greater than 0"):
        check_params(REPO / "params.yaml", {"prune.keep_ratio": 0})
    with pytest.raises(ValueError, match=r"generate: subsets\.text\.trian: unknown key"):
        check_params(REPO / "params.yaml", {"generate.subsets": {"text": {"trian": 3}}})
    with pytest.raises(ValueError, match=r"model\.preset: Input should be"):
        check_params(REPO / "params.yaml", {"model.preset": "nope-9b"})


def test_the_top_level_seed_seeds_every_stage(tmp_path):
    path = _bad(tmp_path, seed=7, prune__seed=3)
    configs = load_params(path)
    assert configs["image_sft"].seed == 7 and configs["score"].seed == 7 and configs["prune"].seed == 3


def test_missing_and_malformed_files_name_themselves(tmp_path):
    with pytest.raises(ValueError, match="params file not found"):
        read_params(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ValueError, match="broken.yaml: not valid YAML"):
        read_params(tmp_path / "broken.yaml")
    with pytest.raises(ValueError, match="no top-level key 'eval'"):
        (tmp_path / "p.yaml").write_text("seed: 0\n")
        load_config("eval", tmp_path / "p.yaml")
    assert set(library_keys()) >= {"seed", "model", "image_sft", "eval"}


def test_model_overrides_are_checked_before_a_run():
    # they are NVILAConfig fields: without this check a misspelt one failed the tokenizer stage, after the data stages
    with pytest.raises(ValueError, match=r"params\.yaml: model\.overrides: unknown model override 'projectr'"):
        check_params(REPO / "params.yaml", {"model.overrides": {"projectr": "none"}})
    with pytest.raises(ValueError, match=r"model\.overrides: .*\['text\.num_hidden_layers'\].*expected int"):
        check_params(REPO / "params.yaml", {"model.overrides": {"text.num_hidden_layers": "four"}})
    assert check_params(REPO / "params.yaml", {"model.overrides": {"text.num_hidden_layers": 4}})
