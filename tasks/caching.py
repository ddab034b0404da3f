"""Input-keyed caching of stage tasks: the key covers the resolved config AND the content of what the stage reads.

Prefect's `INPUTS` policy hashes the task arguments, but a stage's arguments are paths and a config; a path's
string does not change when the data behind it does. `StageContents` adds the sha256 of every data/model path
the stage reads (from its adapter) and of the stage's source files, the same things `dvc.yaml` lists as deps, so
a re-run skips a stage exactly when DVC would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.utilities.hashing import hash_objects

from nvila_model.manifest import hash_path
from tasks.stages import spec

SOURCE_ROOT = Path(__file__).resolve().parent.parent  # where nvila_model/ lives (code paths are relative to it)


def stage_fingerprint(stage: str, config: dict[str, Any]) -> dict[str, str]:
    """sha256 of each data path (relative to the cwd) and source file (relative to the source root) of `stage`."""
    adapter = spec(stage)
    data = {str(p): hash_path(Path(p)) for p in adapter.deps(adapter.build(config)) if p}  # "" is not "."
    code = {f"code:{p}": hash_path(SOURCE_ROOT / p) for p in adapter.code}
    return {**data, **code}


@dataclass
class StageContents(CachePolicy):
    """Key on the content of the stage's inputs and code; reads `stage` and `config` from the task arguments."""

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        if "stage" not in inputs or "config" not in inputs:
            return None
        return hash_objects(stage_fingerprint(inputs["stage"], inputs["config"]), raise_on_failure=True)


# The run context (MLflow parent run, experiment) differs per pipeline run and must not bust the cache;
# TASK_SOURCE keys on the task's own code (what it returns), the library code is in StageContents.
STAGE_CACHE = (INPUTS - "run") + StageContents() + TASK_SOURCE
