"""The offline data source: task files of the BIG-bench 1.0.0 source distribution on PyPI, cached per user.

`bigbench_root()` downloads the sdist once with pip (`pip download --no-deps --no-binary :all: bigbench==1.0.0`;
the package is never installed), streams the tarball and keeps only the task files this package reads:

    <cache>/bigbench-1.0.0/natural_instructions/subtask001_.../task.json   (61 Natural Instructions subtasks)
    <cache>/bigbench-1.0.0/social_iqa/task.json
    <cache>/bigbench-1.0.0/goal_step_wikihow/{goal_inference,step_inference,step_ordering}/task.json

<cache> is `$LIGER_LM_CACHE`, else `$XDG_CACHE_HOME/liger-lm`, else `~/.cache/liger-lm`. Without network access,
download `bigbench-1.0.0.tar.gz` elsewhere and point `$LIGER_LM_BIGBENCH_SDIST` at it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..io import atomic_directory, write_json_atomic
from .errors import DataError

logger = logging.getLogger(__name__)

BIGBENCH_VERSION = "1.0.0"
SDIST_NAME = f"bigbench-{BIGBENCH_VERSION}.tar.gz"
SDIST_URL = f"https://pypi.org/project/bigbench/{BIGBENCH_VERSION}/#files"
CACHE_ENV = "LIGER_LM_CACHE"
SDIST_ENV = "LIGER_LM_BIGBENCH_SDIST"
MARKER = ".extracted.json"  # written last: its presence means the extraction finished

# Task files kept from the tarball, relative to bigbench/benchmark_tasks/ (names are [\w-]+: nothing can escape the root).
_WANTED = re.compile(
    rf"bigbench-{re.escape(BIGBENCH_VERSION)}/bigbench/benchmark_tasks/"
    r"((?:natural_instructions/subtask\d{3}_[\w-]+|social_iqa|goal_step_wikihow/[\w-]+)/task\.json)"
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


def cache_root() -> Path:
    """The user's liger-lm cache folder (not created here)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "liger-lm"


def bigbench_root() -> Path:
    """Folder of the extracted BIG-bench task files; downloads and extracts them on first use."""
    root = cache_root() / f"bigbench-{BIGBENCH_VERSION}"
    if (root / MARKER).is_file():
        return root
    if os.environ.get(SDIST_ENV):
        _extract(_local_sdist(Path(os.environ[SDIST_ENV]).expanduser()), root)
    else:
        with tempfile.TemporaryDirectory(prefix="liger-lm-bigbench-") as download_dir:
            _extract(_download_sdist(Path(download_dir)), root)
    return root


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


def _local_sdist(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{SDIST_ENV}={path} does not exist; point it at a downloaded {SDIST_NAME} ({SDIST_URL})")
    return path


def _download_sdist(folder: Path) -> Path:
    """`pip download` the sdist into `folder` (pip's own progress is shown); a failure becomes one actionable line."""
    logger.info("downloading the BIG-bench %s source distribution (about 360 MB) with pip, once", BIGBENCH_VERSION)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"bigbench=={BIGBENCH_VERSION}", "-d", str(folder)]
    result = subprocess.run(command, stderr=subprocess.PIPE, text=True, check=False)
    found = sorted(folder.glob("bigbench-*.tar.gz"))
    if result.returncode != 0 or not found:
        errors = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        reason = errors[-1] if errors else f"pip exited with code {result.returncode}"
        raise DataError(
            f"could not download {SDIST_NAME} with pip ({reason}); if this machine is offline, download it from "
            f"{SDIST_URL} and set {SDIST_ENV}=/path/to/{SDIST_NAME}"
        )
    return found[0]


def _extract(sdist: Path, root: Path) -> None:
    """Stream `sdist` once and write the wanted task files under `root`, atomically (staging folder + rename)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with atomic_directory(root, overwrite=True) as staging:
        with tqdm.wrapattr(open(sdist, "rb"), "read", total=sdist.stat().st_size, desc="extracting BIG-bench tasks",
                           unit="B", unit_scale=True, unit_divisor=1024) as raw:
            try:
                with tarfile.open(fileobj=raw, mode="r|gz") as tar:
                    for member in tar:
                        match = _WANTED.fullmatch(member.name)
                        if match and member.isfile():
                            target = staging / match.group(1)
                            target.parent.mkdir(parents=True, exist_ok=True)
                            target.write_bytes(tar.extractfile(member).read())
                            count += 1
            except (tarfile.TarError, OSError, EOFError) as err:
                raise DataError(f"cannot read {sdist} as a gzipped tarball ({err}); "
                                f"download {SDIST_NAME} again ({SDIST_URL})") from err
        if not (staging / "social_iqa" / "task.json").is_file() or not any(staging.glob("natural_instructions/subtask*")):
            raise DataError(f"{sdist} does not contain the BIG-bench task files; it must be {SDIST_NAME} from {SDIST_URL}")
        write_json_atomic(staging / MARKER, {"sdist": sdist.name, "files": count})
