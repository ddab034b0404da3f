"""DeltaLoss data pruning (NVILA, REFERENCE.md section 4): score = mean log p_large - mean log p_small over answers.

Modules: `formula` (pure arithmetic), `scorer` (scorer protocol, one batch, the plain loop), `checkpoint_scorer` (an
NVILA checkpoint as a scorer), `ray_pool` (ActorPool scoring with actor replacement), `bootstrap` (proxy scorers for a
self-contained first run), `stage` (`run_score`), `prune` (`run_prune`), `config`, `cli`.

Production: set `score.large_checkpoint` to the previous run's trained model and `score.small_checkpoint` to a smaller
preset's checkpoint; the bootstrap proxies exist only so that the very first pipeline run needs no prior model.
"""
