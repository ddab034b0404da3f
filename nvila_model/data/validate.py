"""`nvila data validate`: a great-expectations suite over each manifest, quarantine with one reason per record."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from ..manifest import staged_output, write_stage_manifest
from ..params import to_dict
from .checks import make_token_counter, record_facts
from .config import ValidateConfig
from .manifest import default_media_root, read_manifest, write_jsonl

log = logging.getLogger(__name__)


def expectations(cfg: ValidateConfig, with_tokens: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """(reason, expectation class name, kwargs) in priority order: a record's reason is its first failure."""
    rules = [
        ("schema", "ExpectColumnValuesToBeInSet", {"column": "schema", "value_set": [""]}),
        ("duplicate_id", "ExpectColumnValuesToBeUnique", {"column": "id"}),
        ("missing_media", "ExpectColumnValuesToBeInSet", {"column": "media_exists", "value_set": [True]}),
        ("image_too_large", "ExpectColumnValuesToBeBetween", {"column": "pixels", "max_value": cfg.max_image_pixels}),
        ("decode_error", "ExpectColumnValuesToBeInSet", {"column": "decode_ok", "value_set": [True]}),
        ("image_too_large", "ExpectColumnValuesToBeBetween", {"column": "width", "max_value": cfg.max_image_side}),
        ("image_too_large", "ExpectColumnValuesToBeBetween", {"column": "height", "max_value": cfg.max_image_side}),
        ("image_too_small", "ExpectColumnValuesToBeBetween", {"column": "min_side", "min_value": cfg.min_image_side}),
        ("too_few_frames", "ExpectColumnValuesToBeBetween", {"column": "frames", "min_value": cfg.min_video_frames}),
        ("turns_not_alternating", "ExpectColumnValuesToBeInSet", {"column": "turns_alternate", "value_set": [True]}),
        ("empty_answer", "ExpectColumnValuesToBeInSet", {"column": "answers_nonempty", "value_set": [True]}),
        ("marker_mismatch", "ExpectColumnValuesToBeInSet", {"column": "markers_match", "value_set": [True]}),
        ("too_long", "ExpectColumnValuesToBeBetween", {"column": "text_chars", "max_value": cfg.max_text_chars}),
    ]
    if with_tokens:
        rules.append(("too_long", "ExpectColumnValuesToBeBetween", {"column": "tokens", "max_value": cfg.max_tokens}))
    return rules


def run_suite(df: pd.DataFrame, cfg: ValidateConfig, docs_dir: Path | None) -> tuple[list[str], bool]:
    """Validate the facts table with great-expectations; one reason per row ('' = kept), and overall success.

    Uses an ephemeral context (nothing written) unless `docs_dir` is given, where the data docs HTML is built.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_def = (context.data_sources.add_pandas("manifest").add_dataframe_asset(cfg.name)
                 .add_batch_definition_whole_dataframe("all"))
    suite = context.suites.add(gx.ExpectationSuite(name=f"{cfg.name}-manifest"))
    rules = expectations(cfg, with_tokens=df["tokens"].notna().any())
    for _, cls, kwargs in rules:
        suite.add_expectation(getattr(gx.expectations, cls)(**kwargs))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=cfg.name, data=batch_def, suite=suite))
    actions = []
    if docs_dir is not None:
        context.add_data_docs_site(site_name="local", site_config={
            "class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())}})
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs"))
    checkpoint = context.checkpoints.add(gx.Checkpoint(name=cfg.name, validation_definitions=[definition],
                                                       actions=actions, result_format={"result_format": "COMPLETE"}))
    result = checkpoint.run(batch_parameters={"dataframe": df})
    (validation,) = result.run_results.values()
    reasons = [""] * len(df)
    first_of_id = ~df["id"].duplicated(keep="first")
    by_rule = {(r.expectation_config.type, r.expectation_config.kwargs.get("column")): r for r in validation.results}
    for reason, cls, kwargs in rules:
        res = by_rule[(_snake(cls), kwargs["column"])]
        for idx in res.result.get("unexpected_index_list") or []:
            if reason == "duplicate_id" and first_of_id.iloc[idx]:
                continue  # the first occurrence of a repeated id is kept
            if not reasons[idx]:
                reasons[idx] = df["schema"].iloc[idx] if reason == "schema" else reason
    return reasons, bool(result.success)


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def summarise(df: pd.DataFrame, reasons: list[str]) -> dict[str, Any]:
    """Counts per reason, per subset and per split; kept + quarantined == input everywhere."""
    df = df.assign(reason=reasons)
    summary: dict[str, Any] = {"input": len(df), "kept": int((df.reason == "").sum()),
                               "quarantined": int((df.reason != "").sum()),
                               "by_reason": dict(Counter(r for r in reasons if r))}
    for key in ("subset", "split"):
        summary[f"by_{key}"] = {
            str(name): {"input": len(g), "kept": int((g.reason == "").sum()),
                        "quarantined": int((g.reason != "").sum()),
                        "reject_share": round(float((g.reason != "").mean()), 4),
                        "by_reason": dict(Counter(r for r in g.reason if r))}
            for name, g in df.groupby(key, sort=True)}
    assert summary["kept"] + summary["quarantined"] == summary["input"]
    return summary


def check_reject_share(summary: dict[str, Any], max_share: float, where: Path) -> None:
    """Fail when any subset rejects more than `max_share` of its records, naming the worst one."""
    subsets = summary["by_subset"]
    worst = max(subsets, key=lambda s: subsets[s]["reject_share"], default=None)
    if worst is not None and subsets[worst]["reject_share"] > max_share:
        w = subsets[worst]
        top = ", ".join(f"{r}: {n}" for r, n in Counter(w["by_reason"]).most_common(3))
        raise ValueError(f"{where}: subset {worst!r} rejected {w['quarantined']}/{w['input']} records "
                         f"({w['reject_share']:.1%} > max_reject_share {max_share:.1%}); reasons {top}. "
                         f"See {where / 'quarantine.jsonl'} and {where / 'summary.json'}")


def load_counter(path: str | Path | None) -> Any:
    """A processor (directory with processor_config.json) or tokenizer from `path`, for token-length checks."""
    if not path:
        return None
    if (Path(path) / "processor_config.json").is_file():
        from ..processor import NVILAProcessor

        return NVILAProcessor.from_pretrained(path)
    from ..tokenizer import load_tokenizer

    return load_tokenizer(path)


def run_validate(cfg: ValidateConfig, raw: str | Path, out: str | Path, tokenizer: Any = None) -> Path:
    """Validate every split of the corpus `raw`; write clean manifests, quarantine, summary and data docs to `out`.

    `tokenizer` (a processor, a tokenizer, or a folder holding either) enables the exact token-length check."""
    src, final = Path(raw), Path(out)
    count_tokens = make_token_counter(load_counter(tokenizer) if isinstance(tokenizer, str | Path) else tokenizer)
    records, rows = [], []
    for split in cfg.splits:
        manifest = src / f"{split}.jsonl"
        root = default_media_root(manifest)
        for record in read_manifest(manifest):
            facts = record_facts(record, root, cfg.max_image_pixels, cfg.min_video_frames, count_tokens)
            records.append(record)
            rows.append({**facts, "split": split})
    if not rows:
        raise ValueError(f"{src}: the manifests of splits {cfg.splits} hold no records")
    df = pd.DataFrame(rows).astype(object)
    df = df.where(df.notna(), None)
    with staged_output(final) as out:
        summary = _write(cfg, src, out, df, records, rows)
    check_reject_share(summary, cfg.max_reject_share, final)
    return final


def _write(cfg: ValidateConfig, src: Path, out: Path, df: pd.DataFrame, records: list[dict[str, Any]],
           rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Run the suite and write the validated corpus into `out`; returns the summary."""
    reasons, _ = run_suite(df, cfg, out / "data_docs" if cfg.data_docs else None)
    quarantine = []
    for split in cfg.splits:
        kept = [r for r, s, why in zip(records, df["split"], reasons, strict=True) if s == split and not why]
        write_jsonl(kept, out / f"{split}.jsonl")
    for record, row, why in zip(records, rows, reasons, strict=True):
        if why:
            detail = row["decode_error"] if why == "decode_error" else ""
            quarantine.append({**record, "split": row["split"], "quarantine_reason": why, "detail": detail})
            log.info("quarantined %s (%s): %s %s", row["id"], row["split"], why, detail)
    write_jsonl(quarantine, out / "quarantine.jsonl")
    summary = summarise(df, reasons)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if (src / "subsets.json").is_file():
        (out / "subsets.json").write_text((src / "subsets.json").read_text())
    media_root = os.path.relpath(default_media_root(src / f"{cfg.splits[0]}.jsonl").resolve(), out.resolve())
    write_stage_manifest(out, "validate", to_dict(cfg), inputs={"raw": src}, media_root=media_root,
                         counts={k: summary[k] for k in ("input", "kept", "quarantined")})
    return summary
