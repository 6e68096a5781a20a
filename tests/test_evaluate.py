"""Evaluation: lm-eval-style log-likelihoods, multiple choice, sliding-window perplexity, suite, recovery, report, CLI."""

from __future__ import annotations

import json
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model, tiny_tokenizer
from tokenizers.processors import TemplateProcessing

import liger_lm
from liger_lm.data.multiple_choice import MultipleChoiceExample
from liger_lm.evaluation import (
    EvaluationError,
    encode_request,
    evaluate_suite,
    loglikelihood_tokens,
    loglikelihoods,
    parse_task_spec,
    perplexity,
    plot_recovery,
    read_source_text,
    recovery,
    recovery_table_markdown,
    score_multiple_choice,
)
from liger_lm.evaluation.perplexity import sliding_windows


def wid(n: int) -> int:
    """Token id of the word wN in the tiny tokenizer (4 special tokens come first)."""
    return n + 4


def words(*numbers: int) -> str:
    return " ".join(f"w{n}" for n in numbers)


EXAMPLES = [
    MultipleChoiceExample(words(5, 6, 7), ("w8", words(9, 10, 11), words(12, 13)), 0),
    MultipleChoiceExample(words(20, 21), (words(22, 23), "w24"), 1),
    MultipleChoiceExample(words(30, 31, 32, 33), ("w34", "w35", words(36, 37, 38, 39)), 2),
    MultipleChoiceExample("w40", (words(41, 42), "w43", "w44"), 1),
    MultipleChoiceExample(words(50, 51, 52), ("w53", words(54, 55)), 0),
    MultipleChoiceExample(words(60, 61, 62, 63, 64), (words(65, 66, 67), "w68", words(69, 70)), 2),
]

REQUESTS = [
    (words(5, 6, 7), " w8"),
    ("w1", " " + words(9, 10, 11)),
    (words(3, 4) + " ", words(5, 6)),
    ("", " " + words(7, 8)),
    (words(*range(10, 30)), " w2"),
    (words(*range(40, 52)), " " + words(60, 61, 62)),
    ("w70", " w71"),
]


# ---------------------------------------------------------------------------------------------- tokenisation


def test_requests_split_like_lm_eval():
    tokenizer = tiny_tokenizer()
    assert encode_request(tokenizer, "w5 w6", " w7 w8") == ([wid(5), wid(6)], [wid(7), wid(8)])
    assert encode_request(tokenizer, "w3 w4 ", "w5") == ([wid(3), wid(4)], [wid(5)])  # trailing space moves
    assert encode_request(tokenizer, "", " w7") == ([tokenizer.bos_token_id], [wid(7)])  # prefix token
    with pytest.raises(EvaluationError, match="no tokens"):
        encode_request(tokenizer, "w5", "")


def test_requests_with_a_bos_adding_tokenizer_never_double_the_bos():
    tokenizer = tiny_tokenizer()
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    assert encode_request(tokenizer, "w5", " w6") == ([1, wid(5)], [wid(6)])
    assert encode_request(tokenizer, "<s> w5", " w6") == ([1, wid(5)], [wid(6)])
    assert encode_request(tokenizer, "", "<s> w6") == ([1], [wid(6)])


# ---------------------------------------------------------------------------------------------- log-likelihoods


def reference_loglikelihood(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """One unbatched forward of context+continuation; word-level ids make the split obvious."""
    context_ids = tokenizer(context)["input_ids"] if context else [tokenizer.bos_token_id]
    continuation_ids = tokenizer(continuation)["input_ids"]
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logprobs = F.log_softmax(model(ids).logits[0].double(), dim=-1)  # [T, V]
    positions = range(len(context_ids) - 1, ids.shape[1] - 1)
    total = sum(logprobs[p, ids[0, p + 1]].item() for p in positions)
    greedy = all(logprobs[p].argmax().item() == ids[0, p + 1].item() for p in positions)
    return total, greedy


def test_loglikelihoods_equal_a_hand_computed_forward():
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    ours = loglikelihoods(model, tokenizer, REQUESTS, batch_size=3, progress=False)
    for (context, continuation), (ll, greedy) in zip(REQUESTS, ours):
        expected_ll, expected_greedy = reference_loglikelihood(model, tokenizer, context, continuation)
        assert ll == pytest.approx(expected_ll, rel=1e-5)
        assert greedy == expected_greedy


def test_greedy_flag_is_true_exactly_for_the_models_own_argmax_continuation():
    model, tokenizer = tiny_model("mistral"), tiny_tokenizer()
    ids = tokenizer("w5 w6 w7")["input_ids"]
    with torch.no_grad():
        for _ in range(3):  # greedy-decode three tokens
            ids.append(model(torch.tensor([ids])).logits[0, -1].argmax().item())
    assert all(token >= 4 for token in ids[3:])  # plain words, so they decode and re-encode to themselves
    greedy = " " + tokenizer.decode(ids[3:])
    other = wid(10) if ids[-1] != wid(10) else wid(11)
    changed_last = " " + tokenizer.decode(ids[3:-1] + [other])
    (_, is_greedy), (_, changed_is_greedy) = loglikelihoods(
        model, tokenizer, [("w5 w6 w7", greedy), ("w5 w6 w7", changed_last)], progress=False
    )
    assert is_greedy and not changed_is_greedy


@pytest.mark.parametrize("converted", [False, True], ids=["base", "liger"])
def test_batched_loglikelihoods_equal_one_by_one(family, converted):
    model = tiny_model(family)
    if converted:
        model = liger_lm.convert(model, window=4)  # requests are longer than the window
    tokenizer = tiny_tokenizer()
    batched = loglikelihoods(model, tokenizer, REQUESTS, batch_size=4, progress=False)
    alone = [loglikelihoods(model, tokenizer, [request], batch_size=1, progress=False)[0] for request in REQUESTS]
    assert [greedy for _, greedy in batched] == [greedy for _, greedy in alone]
    assert [ll for ll, _ in batched] == pytest.approx([ll for ll, _ in alone], rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("method", [None, "liger", "lolcats"], ids=["base", "liger", "lolcats"])
def test_shared_context_scores_equal_the_separate_forwards(family, method):
    """Contexts read once (of equal and of different lengths, with one- and many-token continuations, through the
    decode cache, past the Liger window and its sinks) give each request's separate-forward score and greedy flag."""
    model = tiny_model(family)
    if method == "liger":
        model = liger_lm.convert(model, window=4, sinks=1)
    elif method == "lolcats":
        model = liger_lm.convert(model, method="lolcats", window=4)
    tokenizer = tiny_tokenizer()
    requests = [(example.query, " " + choice) for example in EXAMPLES for choice in example.choices]
    requests += [(words(70, 71, 72), " w8"), (words(20, 21, 22, 23, 24, 25, 26), " " + words(3, 4, 5, 6))]
    shared = loglikelihoods(model, tokenizer, requests, batch_size=2, progress=False)
    separate = loglikelihoods(model, tokenizer, requests, batch_size=1, progress=False, share_context=False)
    assert [greedy for _, greedy in shared] == [greedy for _, greedy in separate]
    assert [ll for ll, _ in shared] == pytest.approx([ll for ll, _ in separate], rel=1e-5, abs=1e-5)
    for (context, continuation), (ll, _) in zip(requests[:3], shared):  # and a hand-computed forward
        assert ll == pytest.approx(reference_loglikelihood(model, tokenizer, context, continuation)[0], rel=1e-5)


def test_too_long_requests_are_truncated_from_the_left_like_lm_eval():
    model = tiny_model("qwen2")
    context, continuation = [wid(n) for n in range(10, 30)], [wid(40), wid(41)]
    (ll, _), = loglikelihood_tokens(model, [(context, continuation)], max_length=8, progress=False)
    window = torch.tensor([(context + continuation)[-9:-1]])  # the last max_length + 1 tokens, minus the last
    with torch.no_grad():
        logprobs = F.log_softmax(model(window).logits[0], dim=-1)
    assert ll == pytest.approx((logprobs[-2, wid(40)] + logprobs[-1, wid(41)]).item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------- multiple choice


def reference_accuracies(model, tokenizer, examples) -> tuple[float, float]:
    """argmax of Σ log p (acc) and of Σ log p / len(choice in characters) (acc_norm), from unbatched forwards."""
    hits = hits_norm = 0
    for example in examples:
        lls = [reference_loglikelihood(model, tokenizer, example.query, " " + c)[0] for c in example.choices]
        norms = [ll / len(c) for ll, c in zip(lls, example.choices)]
        hits += lls.index(max(lls)) == example.label
        hits_norm += norms.index(max(norms)) == example.label
    return hits / len(examples), hits_norm / len(examples)


@pytest.mark.parametrize("seed", [0, 1])
def test_multiple_choice_matches_a_hand_computed_comparison(seed):
    model, tokenizer = tiny_model("llama", seed=seed), tiny_tokenizer()
    scores = score_multiple_choice(model, tokenizer, EXAMPLES, batch_size=5, progress=False)
    acc, acc_norm = reference_accuracies(model, tokenizer, EXAMPLES)
    chance = sum(1 / len(example.choices) for example in EXAMPLES) / len(EXAMPLES)
    assert scores == {"acc": pytest.approx(acc), "acc_norm": pytest.approx(acc_norm), "n": len(EXAMPLES),
                      "chance": pytest.approx(chance)}


def test_multiple_choice_refuses_empty_input():
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    with pytest.raises(EvaluationError, match="no examples"):
        score_multiple_choice(model, tokenizer, [], progress=False)
    with pytest.raises(EvaluationError, match="empty choice"):
        score_multiple_choice(model, tokenizer, [MultipleChoiceExample("w5", ("w6", ""), 0)], progress=False)


# ---------------------------------------------------------------------------------------------- perplexity


def long_text(n_words: int) -> str:
    return words(*((7 * i + 3) % 90 for i in range(n_words)))


def test_perplexity_of_a_text_that_fits_is_one_forward():
    model, tokenizer = tiny_model("qwen3"), tiny_tokenizer()
    text = long_text(30)
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        nll = F.cross_entropy(model(ids).logits[0, :-1], ids[0, 1:]).item()
    result = perplexity(model, tokenizer, text, context=64, stride=32)
    assert result.tokens == ids.shape[1] - 1 == 29
    assert result.nll == pytest.approx(nll, rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(nll), rel=1e-5)
    one_window = perplexity(model, tokenizer, text, context=2048, stride=2048, max_tokens=2047)  # first 2,048 tokens
    assert (one_window.ppl, one_window.tokens) == (pytest.approx(math.exp(nll), rel=1e-5), 29)


def reference_window_start(p: int, n: int, context: int, stride: int) -> int:
    """Start of the window that scores target p: window 0 scores 1..context, window k the next stride targets."""
    if p <= context:
        return 0
    k = math.ceil((p - context) / stride)
    return min(context + k * stride, n - 1) - context


@pytest.mark.parametrize(
    "converted,context,stride,batch_size",
    [(False, 10, 4, 3), (True, 8, 8, 2), (True, 9, 2, 4)],  # overlapping + ragged last batch, disjoint, Liger
)
def test_sliding_window_perplexity_equals_a_per_token_loop(converted, context, stride, batch_size):
    model = tiny_model("llama")
    if converted:
        model = liger_lm.convert(model, window=4)
    tokenizer = tiny_tokenizer()
    text = long_text(29)
    ids = tokenizer(text)["input_ids"]
    nlls = []
    with torch.no_grad():
        for p in range(1, len(ids)):
            start = reference_window_start(p, len(ids), context, stride)
            assert 1 <= p - start <= context
            logits = model(torch.tensor([ids[start:p]])).logits[0, -1]
            nlls.append(-F.log_softmax(logits.double(), dim=-1)[ids[p]].item())
    result = perplexity(model, tokenizer, text, context=context, stride=stride, batch_size=batch_size)
    assert result.tokens == len(ids) - 1 == len(nlls)
    assert result.nll == pytest.approx(sum(nlls) / len(nlls), rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(sum(nlls) / len(nlls)), rel=1e-5)


def test_windows_cover_every_target_once():
    for n, context, stride in [(2, 1, 1), (50, 10, 3), (50, 10, 10), (11, 10, 5), (10, 10, 5)]:
        targets = [t for _, stop, first in sliding_windows(n, context, stride) for t in range(first, stop + 1)]
        assert targets == list(range(1, n))
        assert all(stop - start <= context for start, stop, _ in sliding_windows(n, context, stride))


def test_bad_perplexity_input_is_refused():
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    with pytest.raises(EvaluationError, match="stride"):
        perplexity(model, tokenizer, long_text(20), context=8, stride=9)
    with pytest.raises(EvaluationError, match="fewer than 2 tokens"):
        perplexity(model, tokenizer, "w5")


# ---------------------------------------------------------------------------------------------- text sources


def test_local_text_source_and_missing_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("w5 w6 w7", encoding="utf-8")
    assert read_source_text(str(path)) == "w5 w6 w7"
    with pytest.raises(FileNotFoundError, match="not found"):
        read_source_text(str(tmp_path / "missing.txt"))


@pytest.mark.parametrize(
    "spec,call,column",
    [
        ("hf:wikitext:wikitext-2-raw-v1:test", ("wikitext", "wikitext-2-raw-v1", "test"), "text"),
        ("hf:org/data:train", ("org/data", None, "train"), "text"),
        ("hf:org/data::validation:body", ("org/data", None, "validation"), "body"),
        ("hf:org/data:cfg:test[:10]", ("org/data", "cfg", "test[:10]"), "text"),
    ],
)
def test_hf_source_specs_reach_load_dataset(monkeypatch, spec, call, column):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict({column: ["w1 w2", "", "w3"], "other": ["x", "y", "z"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert read_source_text(spec) == "w1 w2\n\nw3"
    assert calls == [call]


def test_hf_source_errors_are_one_actionable_line(monkeypatch):
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(EvaluationError, match="Hub must be reachable"):
        read_source_text("hf:wikitext:wikitext-2-raw-v1:test")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_dict({"body": ["w1"]}))
    with pytest.raises(EvaluationError, match="no column 'text'; columns are body"):
        read_source_text("hf:x:test")
    for bad in ("hf:", "hf:x", "hf:x:a:b:c:d", "hf:x::"):
        with pytest.raises(EvaluationError, match="bad dataset spec"):
            read_source_text(bad)


# ---------------------------------------------------------------------------------------------- suite, recovery


TASKS = {"alpha": EXAMPLES[:4], "beta": EXAMPLES[2:]}


@pytest.fixture
def fake_tasks(monkeypatch):
    """A stand-in `liger_lm.data.tasks` (the real one is another module's job): two small local tasks."""
    module = types.ModuleType("liger_lm.data.tasks")
    module.calls = []

    def load_task(name, limit, seed):
        module.calls.append((name, limit, seed))
        return TASKS[name][:limit]

    module.load_task = load_task
    module.DEFAULT_SUITE = {"alpha": 3, "beta": 4}
    monkeypatch.setitem(sys.modules, "liger_lm.data.tasks", module)
    return module


def test_suite_scores_each_task_with_its_size(fake_tasks):
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    scores = evaluate_suite(model, tokenizer, seed=7, batch_size=4, progress=False)
    assert fake_tasks.calls == [("alpha", 3, 7), ("beta", 4, 7)]
    assert scores == {
        "alpha": score_multiple_choice(model, tokenizer, EXAMPLES[:3], progress=False),
        "beta": score_multiple_choice(model, tokenizer, EXAMPLES[2:6], progress=False),
    }
    assert evaluate_suite(model, tokenizer, {}, progress=False) == {}


def test_task_specs(fake_tasks):
    assert parse_task_spec("default") == {"alpha": 3, "beta": 4}
    assert parse_task_spec("default", limit=2) == {"alpha": 2, "beta": 2}
    assert parse_task_spec("alpha, gamma=5,beta") == {"alpha": 3, "gamma": 5, "beta": 4}
    assert parse_task_spec("gamma", limit=9) == {"gamma": 9}
    assert parse_task_spec("gamma") == {"gamma": None}
    assert parse_task_spec("none") == {}
    for bad in ("alpha=x", "=3", "alpha=0", ","):
        with pytest.raises(EvaluationError):
            parse_task_spec(bad)


BASE = {"a": {"acc": 0.5, "acc_norm": 0.60, "n": 10, "chance": 0.5}, "b": {"acc": 0.4, "acc_norm": 0.40, "n": 10, "chance": 0.25},
        "only_base": {"acc": 0.1, "acc_norm": 0.1, "n": 10}}
CONVERTED = {"a": {"acc": 0.5, "acc_norm": 0.45, "n": 10}, "b": {"acc": 0.2, "acc_norm": 0.44, "n": 10}}


def test_recovery_per_task_and_average():
    summary = recovery(BASE, CONVERTED)
    assert summary["metric"] == "acc_norm"
    assert summary["tasks"] == {"a": pytest.approx(75.0), "b": pytest.approx(110.0)}
    assert summary["base_average"] == pytest.approx(0.5) and summary["converted_average"] == pytest.approx(0.445)
    assert summary["average"] == pytest.approx(89.0)
    assert recovery(BASE, CONVERTED, metric="acc")["tasks"] == {"a": pytest.approx(100.0), "b": pytest.approx(50.0)}
    zero = {"a": {"acc_norm": 0.0}}
    assert recovery(zero, {"a": {"acc_norm": 0.3}})["tasks"] == {"a": None}
    with pytest.raises(EvaluationError, match="share no task"):
        recovery({"x": BASE["a"]}, CONVERTED)


def test_recovery_markdown_table():
    table = recovery_table_markdown(BASE, CONVERTED, base_name="SmolLM2", converted_name="Liger-GLA")
    lines = table.strip().splitlines()
    assert lines[0] == "| task (acc_norm) | chance | SmolLM2 | Liger-GLA | recovery % |"
    assert lines[2:] == [
        "| a | 50.0 | 60.0 | 45.0 | 75.0 |",
        "| b | 25.0 | 40.0 | 44.0 | 110.0 |",
        "| **average** | 37.5 | 50.0 | 44.5 | 89.0 |",
    ]


def test_recovery_chart_is_a_png_written_atomically(tmp_path):
    from PIL import Image

    path = plot_recovery(BASE, CONVERTED, tmp_path / "charts" / "recovery.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    assert [p.name for p in path.parent.iterdir()] == ["recovery.png"]  # no temporary file left behind


# ---------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def converted_model_dir(tmp_path):
    folder = tmp_path / "liger-tiny"
    liger_lm.convert(tiny_model("llama"), window=4).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_eval_command_prints_recovery_and_writes_json(fake_tasks, tiny_model_dir, converted_model_dir, tmp_path):
    from typer.testing import CliRunner

    from liger_lm.cli import app

    text_file = tmp_path / "text.txt"
    text_file.write_text(long_text(40), encoding="utf-8")
    out = tmp_path / "results.json"
    done = CliRunner().invoke(app, [
        "eval", str(converted_model_dir), "--tasks", "alpha,beta=2", "--base", str(tiny_model_dir),
        "--ppl", str(text_file), "--context", "16", "--stride", "8", "--batch-size", "3", "--out", str(out),
    ])
    assert done.exit_code == 0, done.output
    results = json.loads(out.read_text(encoding="utf-8"))

    model, tokenizer = liger_lm.load_model(str(converted_model_dir))
    base, _ = liger_lm.load_model(str(tiny_model_dir))
    alpha, beta = EXAMPLES[:3], EXAMPLES[2:4]
    assert results["scores"]["alpha"] == pytest.approx(score_multiple_choice(model, tokenizer, alpha, progress=False))
    assert results["base_scores"]["beta"] == pytest.approx(score_multiple_choice(base, tokenizer, beta, progress=False))
    assert results["recovery"] == recovery(results["base_scores"], results["scores"])  # JSON keeps floats exact
    expected_ppl = perplexity(model, tokenizer, long_text(40), context=16, stride=8)
    assert results["perplexity"]["model"]["ppl"] == pytest.approx(expected_ppl.ppl)
    assert results["perplexity"]["base"]["tokens"] == 39
    assert "recovery %" in done.output and "average" in done.output
    assert f"{expected_ppl.ppl:.2f}" in done.output


def test_eval_command_errors_are_one_line(monkeypatch, capsys, tiny_model_dir, tmp_path):
    from liger_lm import cli

    text_file = tmp_path / "text.txt"
    text_file.write_text(long_text(40), encoding="utf-8")
    cases = [
        (["--ppl", str(text_file), "--context", "8", "--stride", "9"], "1 ≤ stride ≤ context"),
        (["--ppl", str(tmp_path / "missing.txt")], "not found"),
        (["--ppl", "hf:x"], "bad dataset spec"),
    ]
    capsys.readouterr()  # drop the fixture's progress output
    for extra, message in cases:
        monkeypatch.setattr(sys, "argv", ["liger", "eval", str(tiny_model_dir), "--tasks", "none", *extra])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1


def test_prose_perplexity_against_independent_forwards_and_positions():
    from liger_lm.evaluation import perplexity_ratio

    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(4, 97, (3 * 33 + 5,), generator=generator).tolist()
    text = " ".join(tokenizer.convert_ids_to_tokens(ids))
    result = perplexity(model, tokenizer, text, max_tokens=96, context=32, long_context=64, batch_size=2).to_dict()
    # Independent: each window of 33 tokens in one plain forward, NLL of its 32 next tokens.
    window_nll = []
    for start in range(0, 99, 33):
        window = torch.tensor(ids[start : start + 33])[None]
        with torch.no_grad():
            logits = model(window).logits[0, :-1]
        window_nll.append(F.cross_entropy(logits, window[0, 1:]).item())
    assert result["window_nll"] == pytest.approx(window_nll, abs=1e-4)
    mean = sum(window_nll) / 3
    assert result["ppl"] == pytest.approx(math.exp(mean), rel=1e-4) and result["tokens"] == 96
    se = (sum((x - mean) ** 2 for x in window_nll) / 2) ** 0.5 / 3**0.5
    assert result["nll_se"] == pytest.approx(se, abs=1e-4)
    window = torch.tensor(ids[:65])[None]
    with torch.no_grad():
        per_token = F.cross_entropy(model(window).logits[0, :-1], window[0, 1:], reduction="none")
    assert list(result["by_position"]) == ["0-64"]  # buckets past long_context are left out
    assert result["by_position"]["0-64"] == pytest.approx(math.exp(per_token.mean().item()), rel=1e-3)
    same = perplexity_ratio(result, result)
    assert same == {"ratio": 1.0, "log_ratio_se": 0.0}
    with pytest.raises(liger_lm.evaluation.EvaluationError, match="fewer than"):
        perplexity(model, tokenizer, text, max_tokens=960, context=32, long_context=64)


def test_positions_and_blocks_come_from_the_long_text_when_given():
    from liger_lm.evaluation import long_context_ratio

    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    generator = torch.Generator().manual_seed(4)
    short_ids, long_ids = (torch.randint(4, 97, (n,), generator=generator).tolist() for n in (8 * 33, 2 * 129))
    text, novel = (" ".join(tokenizer.convert_ids_to_tokens(ids)) for ids in (short_ids, long_ids))
    result = perplexity(model, tokenizer, text, max_tokens=256, context=32, long_context=128, long_text=novel).to_dict()
    alone = perplexity(model, tokenizer, text, max_tokens=256, context=32, long_context=128).to_dict()
    assert result["window_nll"] == alone["window_nll"]  # the short windows read `text` either way
    # Independent: each 129-token window of the long text in one forward; blocks of gcd(256, 128) = 128 tokens.
    per_token = []
    for start in (0, 129):
        window = torch.tensor(long_ids[start : start + 129])[None]
        with torch.no_grad():
            per_token.append(F.cross_entropy(model(window).logits[0, :-1], window[0, 1:], reduction="none"))
    per_token = torch.stack(per_token)  # [2, 128]
    assert result["block"] == 128
    assert result["block_nll"] == [pytest.approx([row.mean().item()], abs=1e-4) for row in per_token]
    assert result["by_position"]["64-128"] == pytest.approx(math.exp(per_token[:, 64:].mean().item()), rel=1e-3)
    shifted = {**result, "block_nll": [[x + 0.1 for x in row] for row in result["block_nll"]]}
    assert long_context_ratio(shifted, result, start=0) == {"ratio": round(math.exp(0.1), 4), "log_ratio_se": 0.0}
    with pytest.raises(liger_lm.evaluation.EvaluationError, match="cannot pair blocks"):
        long_context_ratio(result, result, start=64)
    with pytest.raises(liger_lm.evaluation.EvaluationError, match="at least one window"):
        perplexity(model, tokenizer, text, max_tokens=64, context=32, long_context=128, long_text=novel)
