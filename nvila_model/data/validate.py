"""`nvila data validate`: a great-expectations suite over each manifest, quarantine with one reason per line.

Every non-blank manifest line ends up either kept or quarantined (with its line number and reason): an unreadable
line (`invalid_utf8`, `invalid_json`, `not_an_object`) costs only itself, and a media path leaving the media root is
never opened (`path_escapes_media_root`). Blank lines hold no record and are counted apart (`blank_lines`), so per
split: lines = kept + quarantined + blank_lines.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pandas as pd

from ..manifest import staged_output, write_stage_manifest
from ..params import to_dict
from ..train.config import ModelParams
from .checks import make_token_counter, record_facts
from .config import ValidateConfig
from .manifest import ESCAPES_ROOT, SUBSETS_FILE, UNREADABLE, ManifestEntry, media_root_for, scan_manifest, write_jsonl

log = logging.getLogger(__name__)


def expectations(cfg: ValidateConfig, with_tokens: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """(reason, expectation class name, kwargs) in priority order: a record's reason is its first failure."""
    rules = [
        ("schema", "ExpectColumnValuesToBeInSet", {"column": "schema", "value_set": [""]}),
        ("duplicate_id", "ExpectColumnValuesToBeUnique", {"column": "id"}),
        (ESCAPES_ROOT, "ExpectColumnValuesToBeInSet", {"column": "media_inside_root", "value_set": [True]}),
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
        # only our site: the ephemeral context's default one would copy ~4 MB of HTML into the system temp folder
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["local"]))
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


def _counts(reasons: pd.Series) -> dict[str, Any]:
    return {"input": len(reasons), "kept": int((reasons == "").sum()), "quarantined": int((reasons != "").sum()),
            "reject_share": round(float((reasons != "").mean()), 4) if len(reasons) else 0.0,
            "by_reason": dict(Counter(r for r in reasons if r))}


def summarise(df: pd.DataFrame, reasons: list[str], blank_lines: dict[str, int]) -> dict[str, Any]:
    """Counts overall, per split (with its blank lines) and per subset (readable records only; unreadable lines
    have no subset and are counted under `unreadable`). kept + quarantined == input everywhere."""
    df = df.assign(reason=reasons)
    unreadable = df.reason.isin(UNREADABLE)
    summary: dict[str, Any] = {**_counts(df.reason), "unreadable": int(unreadable.sum()),
                               "blank_lines": sum(blank_lines.values())}
    summary["by_split"] = {str(name): {**_counts(g.reason), "blank_lines": blank_lines.get(str(name), 0)}
                           for name, g in df.groupby("split", sort=True)}
    summary["by_subset"] = {str(name): _counts(g.reason) for name, g in df[~unreadable].groupby("subset", sort=True)}
    for part in (summary, *summary["by_split"].values(), *summary["by_subset"].values()):
        assert part["kept"] + part["quarantined"] == part["input"], part
    return summary


def check_reject_share(summary: dict[str, Any], max_share: float, where: Path) -> None:
    """Fail when any subset rejects more than `max_share` of its records, naming the worst one, or when more than
    that share of all lines is unreadable."""
    see = f"See {where / 'quarantine.jsonl'} and {where / 'summary.json'}"
    if summary["input"] and summary["unreadable"] / summary["input"] > max_share:
        raise ValueError(f"{where}: {summary['unreadable']}/{summary['input']} manifest lines are unreadable "
                         f"(> max_reject_share {max_share:.1%}). {see}")
    subsets = summary["by_subset"]
    worst = max(subsets, key=lambda s: subsets[s]["reject_share"], default=None)
    if worst is not None and subsets[worst]["reject_share"] > max_share:
        w = subsets[worst]
        top = ", ".join(f"{r}: {n}" for r, n in Counter(w["by_reason"]).most_common(3))
        raise ValueError(f"{where}: subset {worst!r} rejected {w['quarantined']}/{w['input']} records "
                         f"({w['reject_share']:.1%} > max_reject_share {max_share:.1%}); reasons {top}. {see}")


def load_counter(path: str | Path | None) -> Any:
    """A processor (directory with processor_config.json) or tokenizer from `path`, for exact token counts."""
    if not path:
        return None
    if (Path(path) / "processor_config.json").is_file():
        from ..processor import NVILAProcessor

        return NVILAProcessor.from_pretrained(path)
    from ..tokenizer import load_tokenizer

    return load_tokenizer(path)


def split_manifest(src: Path, split: str) -> Path:
    """`src/<split>.jsonl`, or a LLaVA-style `src/<split>.json` list."""
    found = [p for p in (src / f"{split}.jsonl", src / f"{split}.json") if p.is_file()]
    if len(found) > 1:
        raise ValueError(f"{src}: both {split}.jsonl and {split}.json exist; keep one")
    if not found:
        raise ValueError(f"{src / f'{split}.jsonl'}: manifest not found (nor {split}.json)")
    return found[0]


def entry_row(entry: ManifestEntry, split: str, root: Path, cfg: ValidateConfig, count_tokens: Any) -> dict[str, Any]:
    """The facts row of one manifest line; an unreadable line is a row whose schema problem is why."""
    if entry.problem:
        facts = record_facts({}, root, cfg.max_image_pixels, cfg.min_video_frames)
        facts.update(schema=entry.problem, subset="")
    else:
        facts = record_facts(entry.record, root, cfg.max_image_pixels, cfg.min_video_frames, count_tokens)
    return {**facts, "split": split}


def quarantine_entry(entry: ManifestEntry, row: dict[str, Any], reason: str, cfg: ValidateConfig,
                     method: str) -> dict[str, Any]:
    """What the quarantine file says of one line: where it was, why, a detail, and the record (or its raw text)."""
    detail = {"decode_error": row["decode_error"], ESCAPES_ROOT: row["path_error"]}.get(reason, entry.detail)
    if reason == "too_long":
        detail = (f"{row['tokens']} tokens > max_tokens {cfg.max_tokens} ({method})"
                  if row["tokens"] is not None and row["tokens"] > cfg.max_tokens
                  else f"{row['text_chars']} characters > max_text_chars {cfg.max_text_chars}")
    where = {"line": entry.line} if entry.line is not None else {"index": entry.index}
    info = {"split": row["split"], **where, "quarantine_reason": reason, "detail": detail}
    return {**info, "raw": entry.raw} if entry.record is None else {**entry.record, **info}


def read_splits(cfg: ValidateConfig, src: Path, root: Path, count_tokens: Any) -> tuple[list[ManifestEntry],
                                                                                      list[dict], dict]:
    """Every line of every split's manifest with its facts row, and the blank lines per split."""
    entries, rows, blank = [], [], {}
    for split in cfg.splits:
        split_entries, blank[split] = scan_manifest(split_manifest(src, split))
        entries += split_entries
        rows += [entry_row(e, split, root, cfg, count_tokens) for e in split_entries]
    if not rows:
        raise ValueError(f"{src}: the manifests of splits {cfg.splits} hold no records")
    return entries, rows, blank


def run_validate(cfg: ValidateConfig, raw: str | Path, out: str | Path, tokenizer: Any = None,
                 model_params: ModelParams | None = None, media_root: str | Path | None = None,
                 docs: str | Path | None = None) -> Path:
    """Validate every split of the corpus `raw`; write clean manifests, quarantine and summary to `out`, and the data
    docs (`cfg.data_docs`) to `docs` (default `out/data_docs`).

    `tokenizer` (a processor, a tokenizer, or a folder holding either) makes the text token counts exact; without
    one they are the UTF-8 byte bound. `model_params` (the `model` key; default `ModelParams()`) gives the exact
    media token counts of the length check. `media_root`: the folder media paths are relative to (LLaVA keeps its
    images apart from the JSON); default the manifests' own (`default_media_root`).

    Everything written to `out` is a function of the inputs and settings: the same corpus validated again gives the
    same bytes, so the stages that read it are restored from DVC's cache. The data docs are not: great-expectations
    stamps them with the time. The pipeline therefore gives them a folder of their own, which no stage reads.
    """
    from ..presets import build_config

    model_params = model_params if model_params is not None else ModelParams()
    src, final = Path(raw), Path(out)
    root = media_root_for(split_manifest(src, cfg.splits[0]), media_root)
    config = build_config(model_params.preset, **model_params.overrides)
    counter = load_counter(tokenizer) if isinstance(tokenizer, str | Path) else tokenizer
    count_tokens, method = make_token_counter(counter, config)
    entries, rows, blank = read_splits(cfg, src, root, count_tokens)
    df = pd.DataFrame(rows).astype(object)
    df = df.where(df.notna(), None)
    length_check = {"text": method, "media": f"preset {model_params.preset}", "max_tokens": cfg.max_tokens}
    with staged_output(final) as staging, \
            staged_output(docs) if docs is not None else nullcontext(staging / "data_docs") as docs_dir:
        summary = _write(cfg, src, staging, root, df, entries, rows, blank, length_check,
                         docs_dir if cfg.data_docs else None)
    check_reject_share(summary, cfg.max_reject_share, final)
    return final


def _write(cfg: ValidateConfig, src: Path, out: Path, root: Path, df: pd.DataFrame, entries: list[ManifestEntry],
           rows: list[dict[str, Any]], blank: dict[str, int], length_check: dict[str, Any],
           docs: Path | None) -> dict[str, Any]:
    """Run the suite (data docs to `docs`, if any) and write the validated corpus into `out`; returns the summary."""
    reasons, _ = run_suite(df, cfg, docs)
    for split in cfg.splits:
        write_jsonl([e.record for e, row, why in zip(entries, rows, reasons, strict=True)
                     if row["split"] == split and not why], out / f"{split}.jsonl")
    quarantine = [quarantine_entry(e, row, why, cfg, length_check["text"])
                  for e, row, why in zip(entries, rows, reasons, strict=True) if why]
    for q in quarantine:
        log.info("quarantined %s line %s: %s %s", q["split"], q.get("line", q.get("index")), q["quarantine_reason"],
                 q["detail"])
    write_jsonl(quarantine, out / "quarantine.jsonl")
    summary = {**summarise(df, reasons, blank), "length_check": length_check}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if (src / SUBSETS_FILE).is_file():
        (out / SUBSETS_FILE).write_text((src / SUBSETS_FILE).read_text())
    counts = {k: summary[k] for k in ("input", "kept", "quarantined", "unreadable", "blank_lines")}
    # the media folder is recorded, not hashed: a user's image folder can be very large
    write_stage_manifest(out, "validate", to_dict(cfg), inputs={"raw": src}, counts=counts, length_check=length_check,
                         media_root=os.path.relpath(root.resolve(), out.resolve()))
    return summary
