"""Plain text cut into training records of bounded size, at paragraph and word boundaries."""

from __future__ import annotations

import re

TEXT_CHUNK_CHARS = 2000


def text_chunks(text: str, max_chars: int = TEXT_CHUNK_CHARS) -> list[str]:
    """Paragraphs (split at blank lines) merged greedily into chunks of ≤ max_chars; longer paragraphs split at spaces."""
    pieces = []
    for paragraph in re.split(r"\n\s*\n", text):
        pieces.extend(_split_words(paragraph.strip(), max_chars))
    chunks: list[str] = []
    for piece in pieces:
        if chunks and len(chunks[-1]) + 2 + len(piece) <= max_chars:
            chunks[-1] += "\n\n" + piece
        else:
            chunks.append(piece)
    return chunks


def _split_words(paragraph: str, max_chars: int) -> list[str]:
    """`paragraph` cut at spaces into pieces of ≤ max_chars (a single longer word stays whole)."""
    pieces: list[str] = []
    for word in paragraph.split(" "):
        if pieces and len(pieces[-1]) + 1 + len(word) <= max_chars:
            pieces[-1] += " " + word
        elif word:
            pieces.append(word)
    return pieces
