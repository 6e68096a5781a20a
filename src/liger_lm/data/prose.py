"""English prose from the BIG-bench sdist: the passages that Natural Instructions subtasks ask questions about.

Each reading-comprehension subtask repeats its source passages across many examples; the passages themselves are
general English prose of several kinds, and are used as plain language-modelling text:

- held out for evaluation (`held_out_prose`, never trained on): the Wikipedia articles of Quoref (subtasks 001–002:
  biographies, film and book plots, history), about 1.1 M characters;
- for training (`training_prose_records`): CosmosQA's personal narratives (022–025), DROP's Wikipedia history and
  sports reports (026–028), MultiRC's news, fiction and science paragraphs (048–058) and ROPES's science
  background paragraphs (059–061).
The BIG-bench data is Apache-2.0; the underlying passages come from those datasets (Wikipedia text is CC BY-SA).
Quoref's subtasks are excluded from the instruction records too (`bigbench.TRAINING_EXCLUDED_SUBTASKS`).

Those passages are short (Quoref's: median 424 tokens), so nothing in them lies thousands of tokens back. For
positions in long contexts there is a novel, `held_out_novel` (never trained on): Natsume Sōseki's *Botchan* in
Yasotaro Morri's 1919 English translation, Project Gutenberg eBook #8868 (public domain in the U.S.), as the
sentencepiece 0.2.0 sdist ships it for its tests (`test/botchan.txt`; the package is Apache-2.0).
"""

from __future__ import annotations

import re

from .bigbench import HELD_OUT_PROSE_SUBTASKS, natural_instruction_subtasks, read_task_json
from .errors import DataError
from .sdist import SdistData
from .text import text_chunks

TRAINING_PROSE_SUBTASKS = tuple(f"subtask{i:03d}" for i in (*range(22, 29), *range(48, 62)))

_LEAD = re.compile(r"^\s*(?:Passage|Context|Background Paragraph|Paragraph-)\s*:?\s*")
_TAIL = re.compile(r"\s*\n\s*(?:Question|Answer type|Story|Answer)\s*:.*$", re.S)
_SENTENCE_NUMBER = re.compile(r"\s*Sent \d+:\s*")


def passage_of(example_input: str) -> str | None:
    """The passage of one example input ("Passage: … \\nQuestion: …" and the like), or None if it has none."""
    if not _LEAD.match(example_input):
        return None
    text = _TAIL.sub("", _LEAD.sub("", example_input, count=1))
    text = _SENTENCE_NUMBER.sub(" ", text).strip()  # MultiRC numbers its sentences ("Sent 1: …Sent 2: …")
    return text or None


def passages(prefixes: tuple[str, ...]) -> list[str]:
    """Distinct passages of the subtasks whose names start with `prefixes`, in subtask and example order."""
    seen: dict[str, str] = {}  # keyed by the first 200 characters: a few passages recur with a changed ending
    for subtask in natural_instruction_subtasks():
        if subtask[: len("subtask000")] not in prefixes:
            continue
        for example in read_task_json(f"natural_instructions/{subtask}/task.json")["examples"]:
            text = passage_of(example["input"])
            if text is not None and len(text) > 200:
                seen.setdefault(text[:200], text)
    return list(seen.values())


# About 250 tokens: pieces this size pack 512-token rows densely (whole passages, up to ~700 tokens, would leave a
# third of each row padding or be dropped).
PROSE_PIECE_CHARS = 1_100


def training_prose_records() -> list[dict[str, str]]:
    """`{"text": piece}` records of the training prose, passages cut at paragraph or word boundaries into pieces of
    at most `PROSE_PIECE_CHARS` characters (none of them is ever evaluated on)."""
    return [{"text": piece} for text in passages(TRAINING_PROSE_SUBTASKS) for piece in text_chunks(text, PROSE_PIECE_CHARS)]


def held_out_prose() -> str:
    """The evaluation prose: Quoref's Wikipedia passages, separated by blank lines."""
    return "\n\n".join(passages(HELD_OUT_PROSE_SUBTASKS))


NOVEL = SdistData(
    package="sentencepiece", version="0.2.0", wanted=re.compile(r"sentencepiece-0\.2\.0/test/(botchan\.txt)"),
    required=("botchan.txt",), contents="the novel Botchan (test/botchan.txt)", size="2.6 MB",
    env="LIGER_LM_SENTENCEPIECE_SDIST",
)
_GUTENBERG_START = "*** START OF THIS PROJECT GUTENBERG EBOOK"
_GUTENBERG_END = "End of Project Gutenberg's"


def held_out_novel() -> str:
    """Botchan (module docstring) between Project Gutenberg's header and its licence: one story, 65,673 tokens with
    the default model's tokenizer."""
    path = NOVEL.root() / "botchan.txt"
    text = path.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    start, end = text.find(_GUTENBERG_START), text.find(_GUTENBERG_END)
    if start < 0 or end < start:
        raise DataError(f"{path} lacks Project Gutenberg's start and end lines; delete {NOVEL.root()} to extract it again")
    return text[text.index("\n", start) + 1 : end].strip()
