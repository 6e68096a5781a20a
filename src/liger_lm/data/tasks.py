"""Zero-shot multiple-choice evaluation tasks from the BIG-bench 1.0.0 sdist, as `MultipleChoiceExample` lists.

Each choice is scored as a continuation of the query after a single space (lm-eval's target delimiter), so queries
carry no trailing space and choices no leading one. How each source becomes query + choices + label:

- `social_iqa`, `goal_step_wikihow` (BIG-bench multiple-choice JSON, `goal_step_wikihow` pools its three subtasks
  goal_inference, step_inference and step_ordering): query = `input` verbatim (stripped), choices = the keys of
  `target_scores` in file order, label = the one key scored 1 (examples without a single best key are skipped).
- `winogrande` (Natural Instructions subtask029 objects + subtask030 persons): each target is a twin pair of
  sentences with one blank `_`; subtask029 names the answer of each ("Answer1: holes."), subtask030's definition says
  the answers are PersonX then PersonY. Each sentence gives one example: query = the text before the blank, choices
  = each option followed by the rest of the sentence, so `query + " " + choice` is the sentence with the blank
  filled (lm-eval's WinoGrande "partial evaluation" conditions on the option and scores only the shared rest; with
  one query per example we score option + rest, which contains that signal and can be split by an evaluator that
  wants partial scoring: the rest is the common suffix of the choices). Choices are (option 1, option 2) and the
  label is 0 for the first twin, 1 for the second, so labels are balanced by construction.
- `qasc` (subtask042, "write an incorrect answer"): input holds a fact, a question and the correct answer, targets
  are incorrect answers. query = "Fact: …\\nQuestion: …\\nAnswer:" (open-book, like OpenBookQA with its fact),
  choices = the correct answer and the first three distinct incorrect ones, the correct one placed at position
  (example index mod 4) so labels are balanced; one trailing period is dropped from every option.
- `science` (subtask047, ARC-like): "Question: … (A) … (B) … (C) … (D) …?" with target "B.". The options are cut at
  "(A)", "(B)", … searched in order (so "(A)" inside a later option is kept as text); the "?" glued to the last
  option and trailing periods are dropped. query = "Question: …\\nAnswer:"; examples answered "E" (I don't know)
  are skipped.

Subsets are the first `limit` examples after a `random.Random(seed)` shuffle of the whole task: fixed per seed.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from ..io import read_utf8
from .bigbench import EVAL_SUBTASKS, read_task_json, subtask_path
from .errors import DataError
from .multiple_choice import MultipleChoiceExample

__all__ = ["DEFAULT_SUITE", "TASKS", "TASK_SOURCES", "load_task", "local_task_examples", "qasc_examples", "science_examples", "target_scores_examples",
           "winogrande_examples"]

# Sizes for scoring the suite with a 135M model on a 2-core CPU in a few minutes (README, "What `make run` does":
# the timing). 200 examples give a standard error of at most 3.5 accuracy points per task; `science` has only 248
# usable examples in all, so it gets 150 (as does qasc, whose requests are the longest per example).
DEFAULT_SUITE: dict[str, int] = {
    "social_iqa": 200,
    "goal_step_wikihow": 200,
    "winogrande": 200,
    "qasc": 150,
    "science": 150,
}

Parser = Callable[[dict[str, Any]], list[MultipleChoiceExample]]


def load_task(name: str, limit: int | None, seed: int = 0) -> list[MultipleChoiceExample]:
    """The first `limit` examples (None: all) of task `name` after a seeded shuffle.

    `name` is a built-in task (`TASKS`) or a local `.jsonl` file of {"query", "choices", "label"} objects.
    """
    if limit is not None and limit <= 0:
        raise DataError(f"limit must be a positive number of examples (or None for all), got {limit}")
    if name.endswith(".jsonl"):
        examples = local_task_examples(Path(name))
    elif name in TASKS:
        examples = []
        for locator, parse in TASK_SOURCES[name]:
            examples.extend(parse(read_task_json(_relative_path(locator))))
    else:
        raise DataError(f"unknown task {name!r}; available tasks: {', '.join(TASKS)}, or a .jsonl file of "
                        '{"query", "choices", "label"} lines')
    examples = list(dict.fromkeys(examples))  # the same item twice would count twice; keep the first
    random.Random(seed).shuffle(examples)
    return examples[:limit]


def local_task_examples(path: Path) -> list[MultipleChoiceExample]:
    """A JSONL task file: one {"query": str, "choices": [str, ...], "label": int} object per line."""
    if not path.is_file():
        raise DataError(f"task file {path} not found")
    examples = []
    for number, line in enumerate(read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            choices = tuple(str(choice) for choice in row["choices"])
            example = MultipleChoiceExample(str(row["query"]), choices, int(row["label"]))
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{path} line {number}: expected {{\"query\", \"choices\", \"label\"}} ({err})") from None
        if len(choices) < 2 or not 0 <= example.label < len(choices):
            raise DataError(f"{path} line {number}: needs ≥ 2 choices and a label indexing one of them")
        examples.append(example)
    if not examples:
        raise DataError(f"task file {path} has no examples")
    return examples


def target_scores_examples(task: dict[str, Any]) -> list[MultipleChoiceExample]:
    """BIG-bench multiple-choice examples `{"input", "target_scores": {choice: score}}` with one best choice."""
    examples = []
    for example in task["examples"]:
        choices = tuple(example["target_scores"])
        scores = list(example["target_scores"].values())
        best = max(scores)
        if len(choices) >= 2 and scores.count(best) == 1:
            examples.append(MultipleChoiceExample(example["input"].strip(), choices, scores.index(best)))
    return examples


_TWINS_WITH_ANSWERS = re.compile(r"\s*Sentence 1:(.*?)Answer1:(.*?)Sentence 2:(.*?)Answer2:(.*)", re.S)
_TWINS = re.compile(r"\s*Sentence 1:(.*?)Sentence 2:(.*)", re.S)


def winogrande_examples(task: dict[str, Any], persons: bool) -> list[MultipleChoiceExample]:
    """Two examples per twin pair: subtask029 (`persons=False`, answers given) or subtask030 (PersonX, PersonY)."""
    examples = []
    for example in task["examples"]:
        for target in example["target"]:
            if persons:
                match = _TWINS.fullmatch(target)
                pairs = [(match.group(1), "PersonX"), (match.group(2), "PersonY")] if match else []
            else:
                match = _TWINS_WITH_ANSWERS.fullmatch(target)
                pairs = [(match.group(1), match.group(2)), (match.group(3), match.group(4))] if match else []
            options = tuple(_strip_period(answer) for _, answer in pairs)
            if len(options) != 2 or options[0].lower() == options[1].lower() or not all(options):
                continue
            for label, (sentence, _) in enumerate(pairs):
                built = _fill_blank(sentence, options, label)
                if built is not None:
                    examples.append(built)
    return examples


def _fill_blank(sentence: str, options: tuple[str, str], label: int) -> MultipleChoiceExample | None:
    """Query = text before the single blank; choices = option + text after it. None if not exactly one blank."""
    sentence = " ".join(sentence.split())
    if sentence.count("_") != 1:
        return None
    before, after = sentence.split("_")
    if not before.strip():
        return None
    return MultipleChoiceExample(before.rstrip(), tuple(option + after for option in options), label)


_QASC_INPUT = re.compile(r"\s*Fact:(.*?)Question:(.*?)Correct Answer:(.*)", re.S)
QASC_CHOICES = 4


def qasc_examples(task: dict[str, Any]) -> list[MultipleChoiceExample]:
    """Fact + question → the correct answer among it and three incorrect ones (subtask042)."""
    examples = []
    for example in task["examples"]:
        match = _QASC_INPUT.fullmatch(example["input"])
        if not match:
            continue
        fact, question, correct = (" ".join(part.split()) for part in match.groups())
        correct = _strip_period(correct)
        wrong = list(dict.fromkeys(_strip_period(" ".join(t.split())) for t in example["target"]))
        wrong = [answer for answer in wrong if answer and answer.lower() != correct.lower()][: QASC_CHOICES - 1]
        if not correct or len(wrong) < QASC_CHOICES - 1:
            continue
        label = len(examples) % QASC_CHOICES
        choices = tuple(wrong[:label] + [correct] + wrong[label:])
        examples.append(MultipleChoiceExample(f"Fact: {fact}\nQuestion: {question}\nAnswer:", choices, label))
    return examples


def science_examples(task: dict[str, Any]) -> list[MultipleChoiceExample]:
    """"Question: … (A) … (D) …?" with target letter → question and lettered options (subtask047)."""
    examples = []
    for example in task["examples"]:
        text = example["input"].strip()
        parsed = _lettered_options(text.removeprefix("Question:"))
        answer = example["target"][0].strip().rstrip(".") if example["target"] else ""
        if parsed is None:
            continue
        question, options = parsed
        letters = "ABCDE"[: len(options)]
        if answer in letters and len(options) >= 2:
            examples.append(MultipleChoiceExample(f"Question: {question}\nAnswer:", tuple(options), letters.index(answer)))
    return examples


def _lettered_options(text: str) -> tuple[str, list[str]] | None:
    """Split "question (A) x (B) y …" at the markers in order; None without at least "(A)" and "(B)"."""
    starts = []
    position = 0
    for letter in "ABCDE":
        found = text.find(f"({letter})", position)
        if found < 0:
            break
        starts.append(found)
        position = found + 3
    if len(starts) < 2:
        return None
    ends = starts[1:] + [len(text)]
    options = [" ".join(text[start + 3 : end].split()) for start, end in zip(starts, ends)]
    options[-1] = options[-1].removesuffix("?")  # the question mark of the source is glued to the last option
    options = [_strip_period(option) for option in options]
    question = " ".join(text[: starts[0]].split())
    return (question, options) if question and all(options) and len(set(options)) == len(options) else None


def _strip_period(text: str) -> str:
    text = text.strip()
    return text[:-1].rstrip() if text.endswith(".") else text


def _relative_path(locator: str) -> str:
    """A task file path, or the path of the Natural Instructions subtask named by a prefix like `subtask029`."""
    return subtask_path(locator) if locator.startswith("subtask") else locator


# Task name → (task file or subtask prefix, parser) pairs whose examples are pooled.
TASK_SOURCES: dict[str, tuple[tuple[str, Parser], ...]] = {
    "social_iqa": (("social_iqa/task.json", target_scores_examples),),
    "goal_step_wikihow": tuple(
        (f"goal_step_wikihow/{sub}/task.json", target_scores_examples)
        for sub in ("goal_inference", "step_inference", "step_ordering")
    ),
    "winogrande": (
        (EVAL_SUBTASKS["winogrande"][0], partial(winogrande_examples, persons=False)),
        (EVAL_SUBTASKS["winogrande"][1], partial(winogrande_examples, persons=True)),
    ),
    "qasc": ((EVAL_SUBTASKS["qasc"][0], qasc_examples),),
    "science": ((EVAL_SUBTASKS["science"][0], science_examples),),
}
TASKS: tuple[str, ...] = tuple(TASK_SOURCES)
