"""Pipeline flow parameters (preset, seed, datasets, keep ratio, prune method) as per-stage config overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nvila_model.params import read_params
from tasks.stages import TRAIN_STAGES, Configs, merge_configs, spec

# Stages whose outputs move under `output_root`: the SFT stages (NVILA prunes the SFT data; the three pre-training
# stages read none of it, so sweep points share them) and everything after them.
RELOCATED = ("image_sft", "video_sft", "eval", "finetune", "quantize", "eval_quantized")


def pruned_manifest(prune: dict[str, Any]) -> str:
    """The pruned manifest of the selected point: `<out_dir>/<method>-<keep_ratio>/train.jsonl` (as `nvila prune`)."""
    return str(Path(prune["out_dir"]) / f"{prune['method']}-{float(prune['keep_ratio']):g}" / "train.jsonl")


def overrides(stage: str, values: dict[str, Any], params: str | Path) -> Configs:
    """Overrides for `stage` from the flow's `values`; a value the stage's configs have no field for is ignored.

    - `preset` -> `model.preset`; `seed` -> the stage's own `seed`; `datasets` -> the stage's own `datasets`.
    - `keep_ratio` / `prune_method` -> `prune.keep_ratio` / `prune.method`; a training stage whose params.yaml
      entry names `pruned_manifest` (null: "set by the pipeline") trains on the selected point's `train.jsonl`,
      when this run prunes (`values["stages"]` holds prune) or that file exists.
    - `overrides` ({params key: {field: value}}, like `dvc exp run -S key.field=value`) applies to every stage
      that reads that key; a field the key's config class lacks is a ValueError.
    - `output_root` moves the outputs of the SFT stages and everything after them (`RELOCATED`) from
      `runs/<stage>` to `<output_root>/<stage>` (and their inputs from those stages with them), so sweep points do
      not overwrite each other.
    """
    adapter = spec(stage)
    out: Configs = {}

    def put(key: str, field: str, value: Any) -> None:
        if value is not None and field in adapter.fields(key):
            out.setdefault(key, {})[field] = value

    put("model", "preset", values.get("preset"))
    put(adapter.key, "seed", values.get("seed"))
    put(adapter.key, "datasets", values.get("datasets"))
    put(adapter.key, "params_file", str(params))  # stages that read the registry themselves (eval)
    put("prune", "keep_ratio", values.get("keep_ratio"))
    put("prune", "method", values.get("prune_method"))
    if stage in TRAIN_STAGES and "pruned_manifest" in (read_params(params).get(stage) or {}):
        pruning = {k: v for k, v in (("keep_ratio", values.get("keep_ratio")), ("method", values.get("prune_method")))
                   if v is not None}
        selected = pruned_manifest(spec("prune").load(params, {"prune": pruning})["prune"])
        if "prune" in values.get("stages", ()) or Path(selected).is_file():
            put(stage, "pruned_manifest", selected)
    own = {key: fields for key, fields in (values.get("overrides") or {}).items() if key in dict(adapter.keys)}
    for key, fields in own.items():
        unknown = sorted(set(fields) - adapter.fields(key))
        if unknown:
            raise ValueError(f"pipeline overrides: {key} has no field(s) {unknown}")
    out = merge_configs(out, own)
    if values.get("output_root") and stage in RELOCATED:
        own = spec(stage).load(params, out)[adapter.key]
        for field, value in own.items():
            moved = relocate(value, values["output_root"])
            if moved != value:
                put(adapter.key, field, moved)
    return out


def relocate(value: Any, root: str) -> Any:
    """`runs/<relocated stage>[/...]` -> `<root>/<stage>[/...]`; any other value unchanged."""
    if not isinstance(value, str):
        return value
    parts = Path(value).parts
    if len(parts) >= 2 and parts[0] == "runs" and parts[1] in RELOCATED:
        return str(Path(root, *parts[1:]))
    return value
