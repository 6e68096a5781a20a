"""Results as tables: one set of rows for the terminal (`liger eval`, rich) and for Markdown (`liger run`'s report.md),
and the recovery chart (PNG).

A table is a header and rows of strings, first column left-aligned and the others right-aligned; scores are shown
×100 (`points`), ratios already in % (`percent`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..io import atomic_file
from .scoring import accuracy_standard_error
from .suite import RECOVERY_METRIC, recovery

Table = tuple[list[str], list[list[str]]]

# docs/method.md §4: Liger-GLA, 0.02 B training tokens; six tasks (PiQA, ARC-e/c, HellaSwag, WinoGrande, MMLU)
PAPER_RESULTS = [
    ("Llama-3-8B → Liger-GLA", 71.7, 67.6),
    ("Llama-3.2-1B → Liger-GLA", 55.1, 52.9),
]
PROSE_ROWS = {"base": "base (softmax attention)", "liger_untrained": "Liger, before fine-tuning",
              "liger": "Liger, fine-tuned", "liger_recurrent_off": "Liger, fine-tuned, recurrent branch zeroed"}


def percent(value: float | None) -> str:
    """A value already in % (a recovery), one decimal; "n/a" when there is none."""
    return "n/a" if value is None else f"{value:.1f}"


def points(score: float | None) -> str:
    """A score in [0, 1] shown ×100, one decimal; "n/a" when there is none."""
    return "n/a" if score is None else f"{100 * score:.1f}"


# --------------------------------------------------------------------------------------------------------------
# Tables as rows
# --------------------------------------------------------------------------------------------------------------


def recovery_rows(
    base_scores: dict[str, dict[str, float]],
    converted_scores: dict[str, dict[str, float]],
    metric: str = RECOVERY_METRIC,
    names: tuple[str, str] = ("base", "converted"),
) -> Table:
    """task | chance | base | converted (`names`) | recovery %, for the tasks both share (scores ×100), then an
    average row.

    Recovery is 100·converted/base per task; the average row is the mean score of each model and their ratio
    (`liger_lm.evaluation.recovery`), with the mean chance when every task has one.
    """
    summary = recovery(base_scores, converted_scores, metric)
    chances = [base_scores[task].get("chance") for task in summary["tasks"]]
    rows = [[task, points(chance), points(base_scores[task][metric]), points(converted_scores[task][metric]),
             percent(ratio)] for (task, ratio), chance in zip(summary["tasks"].items(), chances)]
    mean_chance = sum(chances) / len(chances) if None not in chances else None
    rows.append(["average", points(mean_chance), points(summary["base_average"]),
                 points(summary["converted_average"]), percent(summary["average"])])
    return [f"task ({metric})", "chance", *names, "recovery %"], rows


def score_rows(scores: dict[str, dict[str, float]]) -> Table:
    """task | acc | acc_norm | n for one model (scores ×100)."""
    rows = [[task, points(score["acc"]), points(score["acc_norm"]), str(score["n"])] for task, score in scores.items()]
    return ["task", "acc", "acc_norm", "n"], rows


def eval_table(results: dict[str, Any]) -> Table:
    """The table of `liger eval`'s results (`evaluate_named_models`): recovery against the base model when there is
    one, else the model's own scores."""
    if results.get("recovery"):
        return recovery_rows(results["base_scores"], results["scores"], results["recovery"]["metric"])
    return score_rows(results["scores"])


def perplexity_line(perplexity: dict[str, Any]) -> str:
    """One line for the perplexity part of `liger eval`'s results."""
    values = ", ".join(f"{role} {perplexity[role]['ppl']:.2f}" for role in ("model", "base") if role in perplexity)
    return (f"perplexity of {perplexity['source']} ({perplexity['model']['tokens']} tokens, context "
            f"{perplexity['context']}): {values}")


# --------------------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------------------


def markdown_table(header: list[str], rows: list[list[str]], numeric: bool = True) -> list[str]:
    """Lines of a Markdown table; `numeric`: every column after the first is right-aligned."""
    rule = "|---|" + ("---:|" if numeric else "---|") * (len(header) - 1)
    return [f"| {' | '.join(header)} |", rule, *(f"| {' | '.join(row)} |" for row in rows)]


def recovery_table_markdown(
    base_scores: dict[str, dict[str, float]],
    converted_scores: dict[str, dict[str, float]],
    metric: str = RECOVERY_METRIC,
    base_name: str = "base",
    converted_name: str = "converted",
) -> str:
    """`recovery_rows` as Markdown, the average row in bold."""
    header, rows = recovery_rows(base_scores, converted_scores, metric, (base_name, converted_name))
    rows[-1][0] = f"**{rows[-1][0]}**"
    return "\n".join(markdown_table(header, rows)) + "\n"


def _evaluation_precision(precision: str) -> str:
    """How `liger run` scored both models (its `precision`, resolved on the machine that ran it)."""
    if precision == "bf16":
        return "bf16 autocast (the Liger recurrence in fp32), the base and Liger models alike"
    return "fp32"


def _added_parameters(liger: dict[str, Any]) -> str:
    """What the conversion adds to the base model's weights, in words."""
    added = (["one logit per head and layer"] if liger["combine"] == "shared" else []) + (
        ["a D×D feature matrix per head for q and for k"] if liger.get("learned_features") else [])
    return "+ " + " and ".join(added) if added else "none added"


def render_report(results: dict[str, Any]) -> str:
    """The Markdown report of a `liger run` (its results.json)."""
    liger, training, rec, sec = results["liger"], results["training"], results["recovery"], results["seconds"]
    config = training["config"]
    stages = " → ".join(stage["objective"] for stage in config["stages"]) or config["objective"]
    lines = [
        "# liger-lm run",
        "",
        f"- model: {results['model']}" + (f" ({results['model_note']})" if results["model_note"] else ""),
        f"- preset `{results['preset']}`: gate={liger['gate']}, window={liger['window']}, sinks={liger['sinks']}, "
        + (f"combine=shared (ω init {liger['rec_logit_init']})" if liger["combine"] == "shared" else
           f"normalize={liger['normalize']}, α={liger['rec_weight']}, β={liger['swa_weight']}")
        + (", learned feature maps" if liger.get("learned_features") else "")
        + f", softmax layers={liger['softmax_layers'] or 'none'}; {results['conversion']['parameters']:,} parameters"
        + f" ({_added_parameters(liger)})",
        f"- fine-tune: {training['tokens_trained']:,} tokens (budget '{results['budget']['name']}', "
        f"{results['precision']}), {stages}, LoRA r={config['lora_r']} on {', '.join(config['lora_targets'])}; "
        f"held-out answer loss {training['eval_loss_before']} → {training['eval_loss_after']}",
        f"- evaluation (tasks, held-out prose): {_evaluation_precision(results['precision'])}",
        "- time of this invocation (s): " + ", ".join(f"{k} {v}" for k, v in sec.items()),
        "",
    ]
    if results["warnings"]:
        lines += ["## What looks wrong", "", *(f"- **{warning}**" for warning in results["warnings"]), ""]
    if results["prose"]:
        lines += _prose_section(results["prose"])
    lines += [
        f"## Zero-shot tasks ({rec['metric']}, ×100): recovery {rec['average']:.1f} %",
        "",
        recovery_table_markdown(results["scores"]["base"], results["scores"]["liger"], base_name="base",
                                converted_name="Liger"),
        _standard_errors(results["scores"], rec["metric"]),
        "",
        "For comparison, the paper (different, larger models and tasks; 0.02 B training tokens):",
        "",
        *markdown_table(["model", "base avg", "Liger avg", "recovery %"],
                        [[name, str(b), str(c), percent(100 * c / b)] for name, b, c in PAPER_RESULTS]),
        "",
        "## Decode cache per sequence",
        "",
    ]
    cache = results["cache_bytes"]
    lines += markdown_table(["context tokens", "base KV cache", "Liger state + window"],
                            [[str(length), _mib(cache["base"][length]), _mib(cache["liger"][length])]
                             for length in cache["base"]], numeric=False)
    lines += ["", "## Greedy generations", ""]
    for item in results["generations"]:
        lines += [f"**Prompt:** {item['prompt']}", "", f"- base: {item['base']!r}", f"- Liger: {item['liger']!r}", ""]
    return "\n".join(lines)


def _prose_section(prose: dict[str, Any]) -> list[str]:
    """Held-out prose perplexity of each model (held-out `perplexity` results), × base and by position."""
    base = prose["base"]
    header = ["model", "perplexity", "× base", *(f"positions {span}" for span in base["by_position"])]
    rows = []
    for name, label in PROSE_ROWS.items():
        if name not in prose:
            continue
        result, ratio = prose[name], prose["ratio_to_base"].get(name)
        times = "1" if ratio is None else f"{ratio['ratio']:.3f} (× e^±{ratio['log_ratio_se']:.3f})"
        by_position = (f"{value:.2f}" for value in result["by_position"].values())
        rows.append([label, f"{result['ppl']:.2f}", times, *by_position])
    long_source = prose.get("long_source")
    return [
        f"## Held-out prose perplexity ({base['tokens']:,} tokens in windows of {base['context']:,}; "
        f"by position in windows of {base['long_context']:,})",
        "",
        f"Perplexity and × base: {prose['source']}; × base is paired over the same windows, ± one standard error. "
        + (f"By position: {long_source}." if long_source else "By position: the same text."),
        "",
        *markdown_table(header, rows),
        "",
        *_ablation_lines(prose.get("recurrent_branch_zeroed")),
    ]


def _ablation_lines(zeroed: dict[str, Any] | None) -> list[str]:
    """One sentence: what zeroing the recurrent branch does (ratio zeroed / used, overall, by position and far
    beyond the window)."""
    if not zeroed:
        return []
    by_position = ", ".join(f"{span} × {ratio:.4f}" for span, ratio in zeroed["by_position"].items())
    far = zeroed.get("far")
    beyond = (f"; positions {far['from_position']:,} and later × {far['ratio']:.4f} (× e^±{far['log_ratio_se']:.4f}, "
              f"paired over {far['block']}-token blocks)" if far else "")
    return [f"Recurrent branch zeroed / used, same windows: perplexity × {zeroed['ratio']:.4f} "
            f"(× e^±{zeroed['log_ratio_se']:.4f}); by position {by_position}{beyond}. Above 1: the branch helps.", ""]


def _standard_errors(scores: dict[str, dict[str, dict]], metric: str) -> str:
    """One line: the binomial standard error of each model's average score (points)."""
    parts = []
    for role, by_task in scores.items():
        errors = [accuracy_standard_error(score[metric], score["n"]) for score in by_task.values()]
        average = math.sqrt(sum(e * e for e in errors)) / len(errors) if errors else float("nan")
        parts.append(f"{role} ±{100 * average:.1f}")
    sizes = ", ".join(f"{task} {score['n']}" for task, score in scores["base"].items())
    return f"Standard error of the average (binomial, points): {', '.join(parts)}; examples per task: {sizes}."


def _mib(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.2f} MiB"


# --------------------------------------------------------------------------------------------------------------
# Chart
# --------------------------------------------------------------------------------------------------------------


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
        axes.annotate(f"{percent(ratio)}%", (p, top), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                      textcoords="offset points")
    axes.set_xticks(list(positions), labels, rotation=30, ha="right")
    axes.set_ylabel(f"{metric} (%)")
    axes.set_title(f"Recovery of {converted_name} vs {base_name} ({metric}); label = recovery %")
    axes.legend()
    figure.tight_layout()
    with atomic_file(path) as staging:
        figure.savefig(staging, format="png", dpi=120)
    return Path(path)
