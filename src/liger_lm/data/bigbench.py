"""The BIG-bench 1.0.0 source distribution on PyPI (`liger_lm.data.sdist`): its task files, cached per user.

`bigbench_root()` downloads the sdist once with pip (the package is never installed), streams the tarball and keeps
only the task files this package reads:

    <cache>/bigbench-1.0.0/natural_instructions/subtask001_.../task.json   (61 Natural Instructions subtasks)
    <cache>/bigbench-1.0.0/social_iqa/task.json
    <cache>/bigbench-1.0.0/goal_step_wikihow/{goal_inference,step_inference,step_ordering}/task.json

Without network access, download `bigbench-1.0.0.tar.gz` elsewhere and point `$LIGER_LM_BIGBENCH_SDIST` at it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .errors import DataError
from .sdist import SdistData

BIGBENCH_VERSION = "1.0.0"
SDIST_ENV = "LIGER_LM_BIGBENCH_SDIST"
# Task files kept from the tarball, relative to bigbench/benchmark_tasks/ (names are [\w-]+: nothing can escape the root).
BIGBENCH = SdistData(
    package="bigbench", version=BIGBENCH_VERSION,
    wanted=re.compile(rf"bigbench-{re.escape(BIGBENCH_VERSION)}/bigbench/benchmark_tasks/"
                      r"((?:natural_instructions/subtask\d{3}_[\w-]+|social_iqa|goal_step_wikihow/[\w-]+)/task\.json)"),
    required=("social_iqa/task.json", "natural_instructions/subtask*/task.json"),
    contents="the BIG-bench task files", size="about 360 MB", env=SDIST_ENV,
)

# Natural Instructions subtasks used for evaluation (`liger_lm.data.tasks`), by task name.
EVAL_SUBTASKS: dict[str, tuple[str, ...]] = {
    "winogrande": ("subtask029", "subtask030"),
    "qasc": ("subtask042",),
    "science": ("subtask047",),
}
# Subtasks built from the same source questions as an evaluation subtask (measured: sentences of 029/030 reappear
# in 031-035, QASC questions of 042 in 038-041, every science question of 047 in 043-044 and some in 045), so
# training on any of them would leak test items. The default training set excludes all of 029-045.
SAME_SOURCE_SUBTASKS: tuple[str, ...] = tuple(f"subtask{i:03d}" for i in range(31, 46) if i != 42)
# Quoref's Wikipedia passages (001-002) are the held-out evaluation prose (`liger_lm.data.prose`).
HELD_OUT_PROSE_SUBTASKS: tuple[str, ...] = ("subtask001", "subtask002")
TRAINING_EXCLUDED_SUBTASKS: frozenset[str] = frozenset(
    [prefix for prefixes in EVAL_SUBTASKS.values() for prefix in prefixes] + list(SAME_SOURCE_SUBTASKS)
    + list(HELD_OUT_PROSE_SUBTASKS)
)


def bigbench_root() -> Path:
    """Folder of the extracted BIG-bench task files; downloads and extracts them on first use."""
    return BIGBENCH.root()


def read_task_json(relative: str | Path) -> dict[str, Any]:
    """One extracted task file, e.g. `social_iqa/task.json`, as a dict."""
    root = bigbench_root()
    path = root / relative
    if not path.is_file():
        raise DataError(f"{path} is missing from the BIG-bench cache; delete {root} to extract it again")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err}); delete {root} to extract it again") from err


def natural_instruction_subtasks() -> list[str]:
    """Sorted folder names of the Natural Instructions subtasks (`subtask001_quoref_question_generation`, ...)."""
    folder = bigbench_root() / "natural_instructions"
    return sorted(path.parent.name for path in folder.glob("subtask*/task.json"))


def subtask_path(prefix: str) -> str:
    """Relative task file of the Natural Instructions subtask whose folder starts with `prefix` (e.g. `subtask029`)."""
    matches = [name for name in natural_instruction_subtasks() if name.startswith(prefix)]
    if len(matches) != 1:
        raise DataError(f"expected one Natural Instructions subtask named {prefix}*, found {matches}; "
                        f"delete {bigbench_root()} to extract it again")
    return f"natural_instructions/{matches[0]}/task.json"
