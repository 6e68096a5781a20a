"""Recovery of task scores after conversion: a Markdown table and a PNG bar chart (matplotlib, Agg backend)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .evaluate import RECOVERY_METRIC, recovery


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _chance(chance: float | None) -> str:
    return "n/a" if chance is None else f"{100 * chance:.1f}"


def recovery_table_markdown(
    base_scores: dict[str, dict[str, float]],
    converted_scores: dict[str, dict[str, float]],
    metric: str = RECOVERY_METRIC,
    base_name: str = "base",
    converted_name: str = "converted",
) -> str:
    """| task | chance | base | converted | recovery % | rows for the tasks both share, scores ×100, then an average.

    Recovery is 100·converted/base per task; the average row is the mean score of each model and their ratio
    (see `liger_lm.evaluate.recovery`).
    """
    summary = recovery(base_scores, converted_scores, metric)
    lines = [
        f"| task ({metric}) | chance | {base_name} | {converted_name} | recovery % |",
        "|---|---:|---:|---:|---:|",
    ]
    chances = [base_scores[task].get("chance") for task in summary["tasks"]]
    for (task, ratio), chance in zip(summary["tasks"].items(), chances):
        base, converted = base_scores[task][metric], converted_scores[task][metric]
        lines.append(f"| {task} | {_chance(chance)} | {100 * base:.1f} | {100 * converted:.1f} | {_percent(ratio)} |")
    mean_chance = sum(chances) / len(chances) if None not in chances else None
    lines.append(
        f"| **average** | {_chance(mean_chance)} | {100 * summary['base_average']:.1f} "
        f"| {100 * summary['converted_average']:.1f} | {_percent(summary['average'])} |"
    )
    return "\n".join(lines) + "\n"


def plot_recovery(
    base_scores: dict[str, dict[str, float]],
    converted_scores: dict[str, dict[str, float]],
    path: str | Path,
    metric: str = RECOVERY_METRIC,
    base_name: str = "base",
    converted_name: str = "converted",
) -> Path:
    """Grouped bars (base vs converted, ×100) per shared task plus the average, recovery % above each pair.

    The PNG is written to a temporary file in the target folder and renamed into place (atomic).
    """
    from matplotlib.figure import Figure  # the object API draws without pyplot's global backend and figure list

    summary = recovery(base_scores, converted_scores, metric)
    tasks = list(summary["tasks"])
    labels = tasks + ["average"]
    base = [100 * base_scores[t][metric] for t in tasks] + [100 * summary["base_average"]]
    converted = [100 * converted_scores[t][metric] for t in tasks] + [100 * summary["converted_average"]]
    ratios = [summary["tasks"][t] for t in tasks] + [summary["average"]]

    figure = Figure(figsize=(max(6.0, 1.2 * len(labels) + 2), 4.5))
    axes = figure.subplots()
    positions = range(len(labels))
    width = 0.38
    axes.bar([p - width / 2 for p in positions], base, width, label=base_name, color="#7a7a7a")
    axes.bar([p + width / 2 for p in positions], converted, width, label=converted_name, color="#2b7bba")
    for p, top, ratio in zip(positions, map(max, base, converted), ratios):
        axes.annotate(f"{_percent(ratio)}%", (p, top), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                      textcoords="offset points")
    axes.set_xticks(list(positions), labels, rotation=30, ha="right")
    axes.set_ylabel(f"{metric} (%)")
    axes.set_title(f"Recovery of {converted_name} vs {base_name} ({metric}); label = recovery %")
    axes.legend()
    figure.tight_layout()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            figure.savefig(handle, format="png", dpi=120)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
