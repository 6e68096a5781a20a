"""The lm-eval adapter (`liger_lm.harness`): same answers as our scorer, offline runs of a local YAML task."""

from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("lm_eval")

from conftest import tiny_model, tiny_tokenizer
from lm_eval.api.instance import Instance
from tokenizers.processors import TemplateProcessing

import liger_lm
from liger_lm.data.multiple_choice import MultipleChoiceExample
from liger_lm.evaluation import loglikelihoods, score_multiple_choice
from liger_lm.harness import LigerLM

REQUESTS = [
    ("w5 w6 w7", " w8"),
    ("w1", " w9 w10 w11"),
    ("w3 w4 ", "w5 w6"),  # trailing space moves to the continuation
    ("", " w7 w8"),  # empty context: the prefix token conditions
    ("w10 w11 w12 w13 w14 w15 w16", " w2"),
    ("<s> w20 w21", " w22"),  # already starts with BOS: no second BOS
]

EXAMPLES = [
    MultipleChoiceExample("w5 w6 w7", ("w8", "w9 w10 w11", "w12 w13"), 0),
    MultipleChoiceExample("w20 w21", ("w22 w23", "w24"), 1),
    MultipleChoiceExample("w30 w31 w32 w33", ("w34", "w35", "w36 w37 w38 w39"), 2),
    MultipleChoiceExample("w40", ("w41 w42", "w43", "w44"), 1),
    MultipleChoiceExample("w50 w51 w52", ("w53", "w54 w55"), 0),
]

TASK_YAML = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{query}}}}"
doc_to_target: label
doc_to_choice: choices
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def bos_tokenizer():
    """The tiny tokenizer, but adding <s> in front of every encoded text (as Llama tokenizers do)."""
    tokenizer = tiny_tokenizer()
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tokenizer


@pytest.mark.parametrize("make_tokenizer", [tiny_tokenizer, bos_tokenizer], ids=["no-bos", "bos"])
@pytest.mark.parametrize("converted", [False, True], ids=["base", "liger"])
def test_adapter_answers_loglikelihood_like_our_scorer(make_tokenizer, converted):
    tokenizer = make_tokenizer()
    model = tiny_model("qwen3")
    if converted:
        model = liger_lm.convert(model, window=4)
    adapter = LigerLM(pretrained=model, tokenizer=tokenizer, batch_size=4)
    instances = [Instance("loglikelihood", {}, pair, idx) for idx, pair in enumerate(REQUESTS)]
    theirs = adapter.loglikelihood(instances, disable_tqdm=True)
    ours = loglikelihoods(model, tokenizer, REQUESTS, batch_size=3, progress=False)
    assert [greedy for _, greedy in ours] == [greedy for _, greedy in theirs]
    assert [ll for ll, _ in ours] == pytest.approx([ll for ll, _ in theirs], rel=1e-5, abs=1e-5)


@pytest.fixture
def local_task(tmp_path):
    """A YAML multiple-choice task over a local JSONL file, in its own include folder."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    data = folder / "tiny_mc.jsonl"
    rows = [{"query": ex.query, "choices": list(ex.choices), "label": ex.label} for ex in EXAMPLES]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    (folder / "tiny_mc.yaml").write_text(TASK_YAML.format(data=data), encoding="utf-8")
    return folder


@pytest.fixture
def converted_dir(tmp_path):
    folder = tmp_path / "liger-tiny"
    liger_lm.convert(tiny_model("llama", seed=3), window=4).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_simple_evaluate_runs_a_local_task_offline_with_the_liger_model_name(local_task, converted_dir):
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model="liger",
        model_args=f"pretrained={converted_dir}",
        tasks=["tiny_mc"],
        task_manager=TaskManager(include_path=str(local_task), include_defaults=False),
        batch_size=2,
        device="cpu",
        log_samples=False,
        bootstrap_iters=0,
    )
    model, tokenizer = liger_lm.load_model(str(converted_dir))
    ours = score_multiple_choice(model, tokenizer, EXAMPLES, batch_size=4, progress=False)
    result = out["results"]["tiny_mc"]
    assert result["acc,none"] == pytest.approx(ours["acc"])
    assert result["acc_norm,none"] == pytest.approx(ours["acc_norm"])
    assert out["config"]["model_num_parameters"] == sum(p.numel() for p in model.parameters())


def test_module_command_line_runs_lm_eval_with_the_liger_model(local_task, converted_dir, monkeypatch, capsys):
    """`python -m liger_lm.harness ARGS` is `main()` with ARGS in sys.argv; run in-process to skip re-importing."""
    import lm_eval.tasks

    from liger_lm import harness

    class LocalTasksOnly(lm_eval.tasks.TaskManager):
        """Skips indexing lm-eval's thousands of built-in task YAMLs (~30 s here); the CLI path is unchanged."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "include_defaults": False})

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", LocalTasksOnly)
    monkeypatch.setattr(sys, "argv", [
        "liger_lm.harness", "--model", "liger", "--model_args", f"pretrained={converted_dir}", "--tasks", "tiny_mc",
        "--include_path", str(local_task), "--device", "cpu", "--batch_size", "4",
    ])
    harness.main()
    model, tokenizer = liger_lm.load_model(str(converted_dir))
    ours = score_multiple_choice(model, tokenizer, EXAMPLES, progress=False)
    # lm-eval's table row: |tiny_mc|version|filter|n-shot|acc|↑|value|±|stderr|
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("|tiny_mc"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[4] == "acc" and float(cells[6]) == pytest.approx(ours["acc"], abs=1e-4)

