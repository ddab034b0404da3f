"""Ray actor-pool scoring: same scores as the plain loop, exactly once per record even when actors die."""

from __future__ import annotations

import functools

import pytest
from toy_models import BigramScorer, memorizer, uniform

from nvila_model.deltaloss.config import RayConfig
from nvila_model.deltaloss.ray_pool import score_records_ray
from nvila_model.deltaloss.scorer import ScorerPair, score_records_local

VOCAB = 5
FITTED = [0, 3, 1, 4, 2]


def _pair(delay_s: float = 0.0) -> ScorerPair:
    return ScorerPair(
        small=functools.partial(BigramScorer, uniform(VOCAB), delay_s),
        large=functools.partial(BigramScorer, memorizer(VOCAB, FITTED), delay_s),
    )


def _records(n: int) -> list[dict]:
    out = []
    for i in range(n):
        tokens = FITTED if i % 3 == 0 else [(i + j) % VOCAB for j in range(5)]
        out.append({"id": f"r{i:03d}", "subset": "ab"[i % 2], "tokens": tokens, "num_prompt": 1 + i % 2})
    return out


def _cfg(**kw) -> RayConfig:
    return RayConfig(**{"num_actors": 2, "cpus_per_actor": 1, **kw})


def test_pool_matches_local_loop(ray_cluster):
    records = _records(40)
    rows, stats = score_records_ray(_pair(), records, batch_size=6, cfg=_cfg())
    expected = score_records_local(_pair(), records, batch_size=6)
    assert rows == expected
    assert stats.num_batches == 7 and stats.num_actors_died == 0
    assert [r["id"] for r in rows] == [r["id"] for r in records]


@pytest.mark.parametrize("how", ["exit", "ray.kill"])
def test_exactly_once_when_an_actor_dies_and_ray_restarts_it(ray_cluster, tmp_path, how):
    records = _records(30)
    records[13]["crash"] = {"marker": str(tmp_path / "died"), "how": how}
    rows, stats = score_records_ray(_pair(delay_s=0.02), records, batch_size=5, cfg=_cfg(max_restarts=2))
    assert (tmp_path / "died").exists()  # the actor really died mid-run
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    expected = score_records_local(_pair(), [{k: v for k, v in r.items() if k != "crash"} for r in records], 5)
    assert [r["score"] for r in rows] == [r["score"] for r in expected]
    assert stats.num_actors_died == 0  # Ray's restart + task retry handled it in place


def test_exactly_once_when_a_dead_actor_is_replaced_by_the_driver(ray_cluster, tmp_path):
    records = _records(30)
    records[22]["crash"] = {"marker": str(tmp_path / "died"), "how": "exit"}
    rows, stats = score_records_ray(_pair(delay_s=0.02), records, batch_size=5, cfg=_cfg(max_restarts=0))
    assert (tmp_path / "died").exists()
    assert stats.num_actors_died == 1 and stats.num_actors_started == 3 and stats.num_rounds == 2
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    assert len({r["id"] for r in rows}) == len(records)


def test_repeated_ids_are_rejected_before_starting(ray_cluster):
    records = _records(3) + _records(1)
    with pytest.raises(ValueError, match="repeated record ids"):
        score_records_ray(_pair(), records, batch_size=2, cfg=_cfg())


def test_real_checkpoints_on_the_pool_match_the_local_loop(ray_cluster, colour_corpus):
    from nvila_model.data.manifest import read_manifest
    from nvila_model.deltaloss.config import ScoreConfig
    from nvila_model.deltaloss.stage import checkpoint_pair

    records = read_manifest(colour_corpus / "train.jsonl")
    pair = checkpoint_pair(ScoreConfig(micro_batch_size=2), colour_corpus / "small", colour_corpus / "large",
                           colour_corpus)
    rows, _ = score_records_ray(pair, records, batch_size=2, cfg=_cfg(num_actors=1))
    expected = score_records_local(pair, records, batch_size=2)
    assert [r["id"] for r in rows] == [r["id"] for r in expected]
    assert [r["score"] for r in rows] == pytest.approx([r["score"] for r in expected], abs=1e-5)
