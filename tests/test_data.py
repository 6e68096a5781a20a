"""Data layer: packing, instruction loaders and their errors, the BIG-bench cache, and the task parsers.

Task fixtures copy the structure of the real BIG-bench 1.0.0 files (checked against the sdist); nothing here needs
the sdist or the network except the one `slow` test.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile

import pytest
import torch
from tokenizers import processors

from conftest import tiny_tokenizer
from liger_lm.data import DataError, MultipleChoiceExample
from liger_lm.data import bigbench, sdist
from liger_lm.data.instructions import MAX_EXAMPLE_CHARS, load_instruction_records, task_definition, text_chunks
from liger_lm.data.packing import ALPACA_TEMPLATE, IGNORE_INDEX, format_prompt, pack_records
from liger_lm.data.tasks import (
    DEFAULT_SUITE,
    TASKS,
    load_task,
    qasc_examples,
    science_examples,
    target_scores_examples,
    winogrande_examples,
)

EOS, PAD = 2, 0


def words(start: int, count: int) -> str:
    return " ".join(f"w{(start + i) % 93}" for i in range(count))


def bos_tokenizer():
    """The tiny tokenizer, but adding <s> in front like Llama tokenizers do."""
    tokenizer = tiny_tokenizer()
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tokenizer


def encode(tokenizer, text: str, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def records_of_lengths(lengths: list[int]) -> list[dict[str, str]]:
    return [{"instruction": words(i, 2), "input": words(i + 5, 1) if i % 2 else "", "output": words(i + 9, n)}
            for i, n in enumerate(lengths)]


def real_segments(packed) -> list[list[int]]:
    """Each row's real tokens split after every EOS (EOS only ends records here): the packed records, in order."""
    segments = []
    for ids, mask in zip(packed.input_ids.tolist(), packed.attention_mask.tolist()):
        current: list[int] = []
        for token in ids[: sum(mask)]:
            current.append(token)
            if token == EOS:
                segments.append(current)
                current = []
        assert current == [], "a row ends inside a record"
    return segments


# ---------------------------------------------------------------------------------------------- packing


def test_format_prompt_uses_the_alpaca_template():
    with_input = {"instruction": "Add.", "input": "2 3", "output": "5"}
    without = {"instruction": "Say hi.", "input": "", "output": "hi"}
    assert format_prompt(with_input) == (ALPACA_TEMPLATE["prompt_input"].format(instruction="Add.", input="2 3"), "5")
    assert format_prompt(without) == (ALPACA_TEMPLATE["prompt_no_input"].format(instruction="Say hi."), "hi")
    assert format_prompt({"text": "w1 w2"}) == ("", "w1 w2")
    assert format_prompt(with_input)[0].endswith("### Input:\n2 3\n\n### Response:\n")
    with pytest.raises(DataError):
        format_prompt({"question": "x"})


@pytest.mark.parametrize("make_tokenizer", [tiny_tokenizer, bos_tokenizer])
def test_labels_mask_exactly_the_prompt(make_tokenizer):
    tokenizer = make_tokenizer()
    records = records_of_lengths([3, 7, 1, 12, 5])
    packed = pack_records(records, tokenizer, seq_len=256)
    segments = real_segments(packed)
    flat_labels = [label for row, mask in zip(packed.labels.tolist(), packed.attention_mask.tolist())
                   for label in row[: sum(mask)]]
    position = 0
    for record, segment in zip(records, segments, strict=True):
        prompt, response = format_prompt(record)
        prompt_ids = encode(tokenizer, prompt, special=True)  # independent tokenization of the prompt alone
        response_ids = encode(tokenizer, response, special=False)
        assert segment == prompt_ids + response_ids + [EOS]
        labels = flat_labels[position : position + len(segment)]
        assert labels == [IGNORE_INDEX] * len(prompt_ids) + response_ids + [EOS]
        position += len(segment)
    assert packed.loss_tokens == sum(len(encode(tokenizer, r["output"], False)) + 1 for r in records)


@pytest.mark.parametrize("make_tokenizer", [tiny_tokenizer, bos_tokenizer])
def test_text_records_are_targets_except_special_prefix(make_tokenizer):
    tokenizer = make_tokenizer()
    packed = pack_records([{"text": words(0, 6)}, {"text": words(10, 4)}], tokenizer, seq_len=32)
    prefix = encode(tokenizer, "", special=True)  # [] or [<s>]
    first = prefix + encode(tokenizer, words(0, 6), special=False) + [EOS]
    second = prefix + encode(tokenizer, words(10, 4), special=False) + [EOS]
    n = len(first) + len(second)
    assert packed.input_ids[0, :n].tolist() == first + second
    expected = [IGNORE_INDEX] * len(prefix) + first[len(prefix):] + [IGNORE_INDEX] * len(prefix) + second[len(prefix):]
    assert packed.labels[0, :n].tolist() == expected


def test_rows_are_next_fit_without_splitting_and_padded_at_the_end():
    tokenizer = tiny_tokenizer()
    lengths = [4, 20, 2, 9, 15, 1, 30, 6, 6, 6, 11]
    records = records_of_lengths(lengths)
    seq_len = 64
    packed = pack_records(records, tokenizer, seq_len=seq_len)
    expected = [encode(tokenizer, p, True) + encode(tokenizer, r, False) + [EOS] for p, r in map(format_prompt, records)]
    segments = real_segments(packed)
    assert segments == expected  # every record whole, in order
    # naive next-fit: a record starts a new row exactly when it does not fit in what is left of the current one
    rows, used = 0, seq_len + 1
    for segment in expected:
        if used + len(segment) > seq_len:
            rows, used = rows + 1, 0
        used += len(segment)
    assert len(packed) == rows and packed.input_ids.shape == (rows, seq_len)
    for ids, labels, mask in zip(packed.input_ids, packed.labels, packed.attention_mask):
        real = int(mask.sum())
        assert mask[:real].eq(1).all() and mask[real:].eq(0).all()  # no padding before real tokens
        assert ids[real:].eq(PAD).all() and labels[real:].eq(IGNORE_INDEX).all()
    assert packed.tokens == sum(map(len, expected)) and packed.records == len(records) and packed.dropped == 0
    stats = packed.stats()
    assert stats["padding_fraction"] == pytest.approx(1 - packed.tokens / (rows * seq_len))
    assert set(packed.tensors()) == {"input_ids", "labels", "attention_mask"}


def test_long_record_raises_or_is_dropped():
    tokenizer = tiny_tokenizer()
    records = records_of_lengths([3, 4, 80, 5])
    with pytest.raises(DataError, match=r"record 2 is \d+ tokens, longer than seq_len=48.*drop_long=True"):
        pack_records(records, tokenizer, seq_len=48)
    packed = pack_records(records, tokenizer, seq_len=48, drop_long=True)
    assert (packed.records, packed.dropped) == (3, 1)
    kept = [encode(tokenizer, p, True) + encode(tokenizer, r, False) + [EOS] for p, r in map(format_prompt, records[:2] + records[3:])]
    assert real_segments(packed) == kept
    with pytest.raises(DataError, match="all 1 records are longer"):
        pack_records(records[2:3], tokenizer, seq_len=48, drop_long=True)


def test_pad_falls_back_to_eos():
    tokenizer = tiny_tokenizer()
    tokenizer.pad_token = None
    packed = pack_records(records_of_lengths([2]), tokenizer, seq_len=64)
    real = int(packed.attention_mask.sum())
    assert packed.input_ids[0, real:].eq(EOS).all() and packed.labels[0, real:].eq(IGNORE_INDEX).all()


# ------------------------------------------------------------------------------------- instruction loaders


ROWS = [
    {"instruction": "Name a color.", "output": "Blue."},
    {"instruction": "Add.", "input": "2 and 3", "output": "5"},
    {"prompt": "Say hi.", "response": "Hi!"},
    {"text": "Plain text row."},
    {"instruction": "Empty answer is skipped.", "output": "   "},
]
EXPECTED = [
    {"instruction": "Name a color.", "input": "", "output": "Blue."},
    {"instruction": "Add.", "input": "2 and 3", "output": "5"},
    {"instruction": "Say hi.", "input": "", "output": "Hi!"},
    {"text": "Plain text row."},
]


def sort_key(record):
    return json.dumps(record, sort_keys=True)


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_json_and_jsonl_files(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    text = json.dumps(ROWS) if suffix == ".json" else "\n".join(map(json.dumps, ROWS)) + "\n\n"
    path.write_text(text)
    records = load_instruction_records(str(path))
    assert sorted(records, key=sort_key) == sorted(EXPECTED, key=sort_key)


def test_subsets_are_seeded_shuffles(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps({"instruction": f"i{n}", "output": f"o{n}"}) for n in range(40)))
    full = load_instruction_records(str(path), seed=1)
    assert load_instruction_records(str(path), seed=1) == full
    assert load_instruction_records(str(path), limit=7, seed=1) == full[:7]
    assert load_instruction_records(str(path), seed=2) != full
    assert full != sorted(full, key=lambda r: int(r["instruction"][1:]))  # shuffled, not file order


def test_text_file_is_chunked_at_paragraphs(tmp_path):
    paragraphs = ["alpha " * 30, "beta " * 30, "gamma " * 500]
    path = tmp_path / "book.txt"
    path.write_text("\n\n".join(p.strip() for p in paragraphs) + "\n")
    records = load_instruction_records(str(path), seed=0)
    texts = [r["text"] for r in records]
    assert all(set(r) == {"text"} for r in records)
    assert all(len(t) <= 2000 for t in texts)
    assert " ".join(sorted(" ".join(texts).split())) == " ".join(sorted(" ".join(paragraphs).split()))
    assert (paragraphs[0].strip() + "\n\n" + paragraphs[1].strip()) in texts  # short paragraphs merged
    assert text_chunks("a b c d e f", max_chars=3) == ["a b", "c d", "e f"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.json", None, "does not exist"),
        ("empty.jsonl", "  \n", "is empty"),
        ("bad.json", '[{"instruction": "a", "output": "b"},\n {"instruction": }]', r"not valid JSON .*line 2"),
        ("bad.jsonl", '{"instruction": "a", "output": "b"}\n\n{"instruction": "a" "output": "b"}\n', r"line 3 is not valid JSON"),
        ("rows.jsonl", '{"instruction": "a", "output": "b"}\n{"question": "a", "answer": "b"}\n', r"line 2: missing fields.*\['answer', 'question'\]"),
        ("rows.json", '[{"instruction": "a", "output": "b"}, {"instruction": "a", "output": 3}]', r"record 1: field 'output' must be a string"),
        ("scalar.json", '{"instruction": "a", "output": "b"}', "must hold a JSON list"),
        ("list.jsonl", '["a", "b"]\n', "line 1: expected an object"),
        ("blank.json", '[{"instruction": "a", "output": ""}, {"text": " "}]', "no usable rows"),
        ("data.csv", "instruction,output\na,b\n", "unsupported file type"),
    ],
)
def test_loader_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message) as caught:
        load_instruction_records(str(path))
    assert "\n" not in str(caught.value) and name in str(caught.value)


def test_limit_must_be_positive(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n')
    with pytest.raises(DataError, match="limit"):
        load_instruction_records(str(path), limit=0)


def test_hub_dataset_name_split_and_config(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return [{"instruction": "q", "input": "", "output": "a", "extra": 1}, {"text": "some text"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    records = load_instruction_records("org/alpaca", seed=0)
    assert sorted(records, key=sort_key) == sorted([{"instruction": "q", "input": "", "output": "a"}, {"text": "some text"}], key=sort_key)
    load_instruction_records("org/alpaca:validation")
    load_instruction_records("org/alpaca:cfg:test")
    assert calls == [("org/alpaca", None, "train"), ("org/alpaca", None, "validation"), ("org/alpaca", "cfg", "test")]


def test_unreachable_hub_is_one_clear_line(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'org/alpaca' on the Hub (LocalEntryNotFoundError)\nmore details")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"cannot load Hugging Face dataset 'org/alpaca'.*Couldn't reach.*Hub is reachable") as caught:
        load_instruction_records("org/alpaca")
    assert "\n" not in str(caught.value)
    with pytest.raises(DataError, match="cannot parse"):
        load_instruction_records("a:b:c:d")


# ------------------------------------------------------------------------------ BIG-bench cache and default set


def ni_task(name: str, examples: list[tuple[str, list[str]]]) -> dict:
    """A Natural Instructions subtask file shaped like the real ones (description = sections, examples = input/target)."""
    description = (f"Definition: Do {name} Carefully. \n Things to Avoid: nothing. \n Emphasis/Caution: none.")
    return {"name": name, "description": description, "task_prefix": description + " Prompt: do it.",
            "keywords": ["x"], "metrics": ["rouge"], "preferred_score": "rougeLsum", "canary": "c",
            "examples": [{"input": i, "target": t} for i, t in examples]}


SUBTASKS = {
    "subtask001_quoref_question_generation": [("passage one", ["question one"]), ("p" * MAX_EXAMPLE_CHARS, ["too long"])],
    "subtask002_quoref_answer_generation": [("passage two", ["answer two", "other"]), ("no answer", [""])],
    "subtask029_winogrande_full_object": [("Context Word: rats.", ["Sentence 1: The _ ran. \nAnswer1: rats. \nSentence 2: The _ sat. \nAnswer2: cats."])],
    "subtask033_winogrande_answer_generation": [("The _ ran.", ["rats"])],
    "subtask041_qasc_answer_generation": [("What can damage buildings?", ["earthquakes"])],
    "subtask046_miscellaenous_question_typing": [("Is it a question?", ["yes"])],
}


def write_extracted(root, files: dict[str, dict]) -> None:
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(json.dumps(data))


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    """An already extracted BIG-bench cache holding the given files (dict relative path → JSON)."""
    monkeypatch.setenv(sdist.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(bigbench.SDIST_ENV, raising=False)

    def build(files: dict[str, dict]):
        root = tmp_path / "cache" / f"bigbench-{bigbench.BIGBENCH_VERSION}"
        write_extracted(root, files)
        (root / sdist.MARKER).write_text("{}")
        return root

    return build


def ni_files(subtasks: dict) -> dict[str, dict]:
    return {f"natural_instructions/{name}/task.json": ni_task(name, examples) for name, examples in subtasks.items()}


def test_default_set_skips_eval_same_source_and_held_out_prose_subtasks(fake_cache):
    fake_cache(ni_files(SUBTASKS))
    records = load_instruction_records("default", seed=0)
    # Quoref (001, 002) is the held-out evaluation prose: never trained on, not even as instructions.
    expected = [
        {"instruction": "Do subtask046_miscellaenous_question_typing Carefully.", "input": "Is it a question?", "output": "yes"},
    ]
    assert sorted(records, key=sort_key) == sorted(expected, key=sort_key)
    assert {"subtask001", "subtask002", "subtask029", "subtask030", "subtask042", "subtask047", "subtask033",
            "subtask041"} <= bigbench.TRAINING_EXCLUDED_SUBTASKS
    assert {p for ps in bigbench.EVAL_SUBTASKS.values() for p in ps} == {"subtask029", "subtask030", "subtask042", "subtask047"}


def sdist_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


TASKS_PREFIX = f"bigbench-{bigbench.BIGBENCH_VERSION}/bigbench/benchmark_tasks/"


def test_extracts_only_the_needed_files_once(tmp_path, monkeypatch):
    members = {
        TASKS_PREFIX + "natural_instructions/subtask001_x/task.json": b'{"a": 1}',
        TASKS_PREFIX + "natural_instructions/task.json": b"{}",
        TASKS_PREFIX + "natural_instructions/subtask001_x/README.md": b"readme",
        TASKS_PREFIX + "social_iqa/task.json": b'{"b": 2}',
        TASKS_PREFIX + "goal_step_wikihow/step_ordering/task.json": b'{"c": 3}',
        TASKS_PREFIX + "goal_step_wikihow/task.json": b"{}",
        TASKS_PREFIX + "goal_step_wikihow/../../evil/task.json": b"{}",
        TASKS_PREFIX + "arithmetic/task.json": b"{}",
        "bigbench-1.0.0/setup.py": b"",
    }
    tarball = tmp_path / "bigbench-1.0.0.tar.gz"
    tarball.write_bytes(sdist_bytes(members))
    monkeypatch.setenv(sdist.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(bigbench.SDIST_ENV, str(tarball))
    root = bigbench.bigbench_root()
    assert root == tmp_path / "cache" / "bigbench-1.0.0"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == [sdist.MARKER, "goal_step_wikihow/step_ordering/task.json",
                     "natural_instructions/subtask001_x/task.json", "social_iqa/task.json"]
    assert bigbench.read_task_json("social_iqa/task.json") == {"b": 2}
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["bigbench-1.0.0"]  # no staging folder left
    tarball.unlink()  # later calls reuse the cache without the sdist
    assert bigbench.bigbench_root() == root
    assert bigbench.subtask_path("subtask001") == "natural_instructions/subtask001_x/task.json"


def test_bad_sdist_leaves_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(sdist.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(bigbench.SDIST_ENV, str(tmp_path / "missing.tar.gz"))
    with pytest.raises(DataError, match="LIGER_LM_BIGBENCH_SDIST=.*does not exist"):
        bigbench.bigbench_root()
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"not a tarball")
    monkeypatch.setenv(bigbench.SDIST_ENV, str(broken))
    with pytest.raises(DataError, match="cannot read .* as a gzipped tarball"):
        bigbench.bigbench_root()
    other = tmp_path / "other.tar.gz"
    other.write_bytes(sdist_bytes({"other-1.0/setup.py": b""}))
    monkeypatch.setenv(bigbench.SDIST_ENV, str(other))
    with pytest.raises(DataError, match="does not contain the BIG-bench task files"):
        bigbench.bigbench_root()
    assert list((tmp_path / "cache").iterdir()) == []


def test_held_out_novel_is_the_story_between_gutenbergs_header_and_licence(tmp_path, monkeypatch):
    from liger_lm.data.prose import NOVEL, held_out_novel

    book = ("\ufeffProject Gutenberg's Botchan\r\nlicence words\r\n*** START OF THIS PROJECT GUTENBERG EBOOK BOTCHAN ***"
            "\r\nChapter I\r\nA story.\r\n\r\nEnd of Project Gutenberg's Botchan\r\n*** END OF ... ***\r\nlicence\r\n")
    tarball = tmp_path / "sentencepiece-0.2.0.tar.gz"
    tarball.write_bytes(sdist_bytes({"sentencepiece-0.2.0/test/botchan.txt": book.encode(),
                                     "sentencepiece-0.2.0/test/other.txt": b"x"}))
    monkeypatch.setenv(sdist.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(NOVEL.env, str(tarball))
    assert held_out_novel() == "Chapter I\nA story."
    assert sorted(p.name for p in NOVEL.root().iterdir()) == [sdist.MARKER, "botchan.txt"]
    (NOVEL.root() / "botchan.txt").write_text("a text without Gutenberg's lines")
    with pytest.raises(DataError, match="lacks Project Gutenberg's start and end lines"):
        held_out_novel()
    monkeypatch.setenv(sdist.CACHE_ENV, str(tmp_path / "other-cache"))
    tarball.write_bytes(sdist_bytes({"sentencepiece-0.2.0/setup.py": b""}))
    with pytest.raises(DataError, match="does not contain the novel Botchan"):
        held_out_novel()


def test_pip_failure_says_how_to_work_offline(tmp_path, monkeypatch):
    monkeypatch.setenv(sdist.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(bigbench.SDIST_ENV, raising=False)
    seen = []

    def failing_pip(command, **kwargs):
        seen.append(command)
        return subprocess.CompletedProcess(command, 1, stderr="WARNING: retrying\nERROR: No matching distribution found for bigbench==1.0.0\n")

    monkeypatch.setattr(sdist.subprocess, "run", failing_pip)
    with pytest.raises(DataError, match=r"No matching distribution.*LIGER_LM_BIGBENCH_SDIST=/path/to/bigbench-1.0.0.tar.gz") as caught:
        bigbench.bigbench_root()
    assert "\n" not in str(caught.value)
    assert seen[0][:6] == [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary"]
    assert "bigbench==1.0.0" in seen[0]


# ------------------------------------------------------------------------------------------------ tasks


def test_target_scores_examples():
    task = {"examples": [
        {"input": "Tracy resisted. What does Tracy need to do before this? ", "target_scores": {"Make a plan": 0, "Go home": 0, "Find somewhere": 1}},
        {"input": "The most reasonable goal of 'x' is ", "target_scores": {"A": 1, "B": 0}},
        {"input": "tie", "target_scores": {"A": 1, "B": 1}},
    ]}
    assert target_scores_examples(task) == [
        MultipleChoiceExample("Tracy resisted. What does Tracy need to do before this?", ("Make a plan", "Go home", "Find somewhere"), 2),
        MultipleChoiceExample("The most reasonable goal of 'x' is", ("A", "B"), 0),
    ]


def test_winogrande_objects_fill_the_blank():
    task = {"examples": [
        {"input": "Context Word: rats.", "target": [
            "Sentence 1: The rats fled their holes for the open spaces since the _ were crowded for them. \nAnswer1: holes. \n"
            "Sentence 2: The rats fled their holes for the open spaces since the _ were roomy for them. \nAnswer2: spaces."]},
        {"input": "Context Word: bad.", "target": ["Sentence 1: _ _ two blanks. \nAnswer1: a. \nSentence 2: The _ one. \nAnswer2: b."]},
    ]}
    examples = winogrande_examples(task, persons=False)
    query = "The rats fled their holes for the open spaces since the"
    assert examples == [
        MultipleChoiceExample(query, ("holes were crowded for them.", "spaces were crowded for them."), 0),
        MultipleChoiceExample(query, ("holes were roomy for them.", "spaces were roomy for them."), 1),
        MultipleChoiceExample("The", ("a one.", "b one."), 1),  # its twin has two blanks: only that one is skipped
    ]
    filled = examples[0].query + " " + examples[0].choices[examples[0].label]
    assert filled == "The rats fled their holes for the open spaces since the holes were crowded for them."


def test_winogrande_persons_are_x_then_y():
    task = {"examples": [{"input": "Context Word: accepted.", "target": [
        "Sentence 1: PersonX was accepted by PersonY for her club, so _ was a new member at last. \n"
        "Sentence 2: PersonX was accepted by PersonY for her club, so _ had a new member at last.",
        "Sentence 1: _ starts with a blank. \nSentence 2: PersonX helped PersonY, so _ was thanked.",
    ]}]}
    query = "PersonX was accepted by PersonY for her club, so"
    assert winogrande_examples(task, persons=True) == [
        MultipleChoiceExample(query, ("PersonX was a new member at last.", "PersonY was a new member at last."), 0),
        MultipleChoiceExample(query, ("PersonX had a new member at last.", "PersonY had a new member at last."), 1),
        MultipleChoiceExample("PersonX helped PersonY, so", ("PersonX was thanked.", "PersonY was thanked."), 1),
    ]


def test_qasc_rotates_the_correct_answer():
    example = {"input": "Fact: earthquakes can damage buildings. \nQuestion: What can damage buildings? \nCorrect Answer: earthquakes.",
               "target": ["lightning.", "meteors.", "storms.", "extra."]}
    too_few = {"input": "Fact: f. \nQuestion: q? \nCorrect Answer: a.", "target": ["a.", "b."]}
    examples = qasc_examples({"examples": [example, too_few, example, example, example, example]})
    assert [e.label for e in examples] == [0, 1, 2, 3, 0]
    assert examples[0].query == "Fact: earthquakes can damage buildings.\nQuestion: What can damage buildings?\nAnswer:"
    assert examples[2].choices == ("lightning", "meteors", "earthquakes", "storms")
    assert all(e.choices[e.label] == "earthquakes" for e in examples)


def test_science_parses_lettered_options():
    task = {"examples": [
        {"input": "Question: When a guitar string is plucked, sound is produced by  (A) the size of the guitar. (B) the metal on the guitar. (C) the wood on the guitar. (D) the vibrations of the string?", "target": ["D."]},
        {"input": "Question: If species A is stronger, what happens to species B?  (A) It lives with species (A) (B) It moves away (C) It dies?", "target": ["B."]},
        {"input": "Question: Unanswerable?  (A) x (B) y (C) z (D) w?", "target": ["E."]},
    ]}
    assert science_examples(task) == [
        MultipleChoiceExample("Question: When a guitar string is plucked, sound is produced by\nAnswer:",
                              ("the size of the guitar", "the metal on the guitar", "the wood on the guitar", "the vibrations of the string"), 3),
        MultipleChoiceExample("Question: If species A is stronger, what happens to species B?\nAnswer:",
                              ("It lives with species (A)", "It moves away", "It dies"), 1),
    ]


def test_load_task_subsets_and_unknown_names(fake_cache):
    social = {"examples": [{"input": f"Question {i}?", "target_scores": {"yes": i % 2, "no": 1 - i % 2}} for i in range(30)]}
    science = ni_task("subtask047_misc_answering_science_questions",
                      [(f"Question: q{i}?  (A) a{i} (B) b{i}?", ["A."]) for i in range(10)])
    fake_cache({"social_iqa/task.json": social,
                "natural_instructions/subtask047_misc_answering_science_questions/task.json": science})
    full = load_task("social_iqa", None, seed=5)
    assert len(full) == 30 and load_task("social_iqa", None, seed=5) == full
    assert load_task("social_iqa", 8, seed=5) == full[:8]
    assert load_task("social_iqa", 8, seed=6) != full[:8]
    assert all(e.choices[e.label] == ("yes" if int(e.query.split()[1][:-1]) % 2 else "no") for e in full)
    assert len(load_task("science", 100)) == 10
    with pytest.raises(DataError, match="unknown task 'piqa'; available tasks: social_iqa, goal_step_wikihow, winogrande, qasc, science"):
        load_task("piqa", 10)
    assert set(DEFAULT_SUITE) == set(TASKS)


# ------------------------------------------------------------------------------------------ real data


@pytest.mark.slow
def test_real_bigbench_tasks_and_default_set():
    """Needs the extracted sdist (downloads it once, ~360 MB): every task loads at its default size, no leakage."""
    for name, size in DEFAULT_SUITE.items():
        examples = load_task(name, size)
        assert len(examples) == size, name
        assert all(0 <= e.label < len(e.choices) and len(set(e.choices)) == len(e.choices) >= 2 for e in examples)
        assert all(e.query == e.query.strip() and all(c == c.strip() and c for c in e.choices) for e in examples)
    records = load_instruction_records("default")
    assert len(records) > 10_000
    inputs = {" ".join(r["input"].split()) for r in records}
    instructions = {r["instruction"] for r in records}
    for prefix in bigbench.TRAINING_EXCLUDED_SUBTASKS:
        task = bigbench.read_task_json(bigbench.subtask_path(prefix))
        assert not inputs & {" ".join(e["input"].split()) for e in task["examples"]}, prefix
        assert task_definition(task["description"]) not in instructions, prefix
    # no evaluation question or WinoGrande sentence appears anywhere in the training text
    training_text = " ".join(" ".join(r["input"] + " " + r["output"] for r in records).split())
    for name in ("winogrande", "qasc", "science"):
        for example in load_task(name, 300):
            core = example.query.split("Question: ")[-1].removesuffix("\nAnswer:")
            if len(core) >= 30:  # shorter prefixes ("So", "The man") are not evidence of anything
                assert core[:50] not in training_text, (name, core)


def test_max_rows_stops_packing_early_with_the_same_rows():
    tokenizer = tiny_tokenizer()
    records = [{"instruction": "w5 w6", "output": " ".join(["w7"] * (i % 5 + 1))} for i in range(40)]
    full = pack_records(records, tokenizer, seq_len=32)
    first = pack_records(records, tokenizer, seq_len=32, max_rows=2)
    assert len(full) > 2 and len(first) == 2
    assert torch.equal(first.input_ids, full.input_ids[:2]) and torch.equal(first.labels, full.labels[:2])


def test_local_task_file(tmp_path):
    path = tmp_path / "task.jsonl"
    path.write_text('{"query": "w5 w6", "choices": ["w7", "w8"], "label": 1}\n\n{"query": "w9", "choices": ["w1", "w2", "w3"], "label": 0}\n')
    assert load_task(str(path), limit=None, seed=3) and sorted(e.query for e in load_task(str(path), None)) == ["w5 w6", "w9"]
    assert MultipleChoiceExample("w5 w6", ("w7", "w8"), 1) in load_task(str(path), None)
    path.write_text('{"query": "w5", "choices": ["w7"], "label": 0}\n')
    with pytest.raises(DataError, match="line 1: needs ≥ 2 choices"):
        load_task(str(path), None)
    path.write_text('{"query": "w5", "label": 0}\n')
    with pytest.raises(DataError, match="line 1"):
        load_task(str(path), None)


def test_prompt_loss_labels_the_prompt_but_not_special_tokens():
    tokenizer = tiny_tokenizer()
    records = [{"instruction": "w5 w6", "output": "w7 w8"}]
    plain = pack_records(records, tokenizer, seq_len=64)
    full = pack_records(records, tokenizer, seq_len=64, prompt_loss=True)
    assert torch.equal(plain.input_ids, full.input_ids)
    response = plain.labels != IGNORE_INDEX
    assert torch.equal(full.labels[response], plain.labels[response])
    real = full.attention_mask.bool()
    special = torch.isin(full.input_ids, torch.tensor(tokenizer.all_special_ids))
    assert torch.equal(full.labels[real & ~special], full.input_ids[real & ~special])
    assert (full.labels[special & real & ~response] == IGNORE_INDEX).all()
