"""Indexing documents given as JSON lines instead of files: one object per line with an `_id`, a `text` and
an optional `title` (the BEIR `corpus.jsonl` format). Each becomes a document stored under its `_id` as path,
so search results and `embedkit eval` name documents by their ids. Incremental like file indexing: a
document whose title and text are unchanged is not re-embedded."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedkit.errors import InputError
from embedkit.index.chunk import DEFAULT_OVERLAP
from embedkit.index.pipeline import DEFAULT_COLLECTION, IndexProgress, IndexReport, index_texts
from embedkit.store import Store
from embedkit.store.collections import ModelIdentity


@dataclass(frozen=True)
class JsonlDocument:
    """One line of a corpus file."""

    doc_id: str
    title: str
    text: str

    @property
    def full_text(self) -> str:
        """What is chunked and embedded: the title, a blank line, then the text (as BEIR's dense baselines
        join them)."""
        return f"{self.title}\n\n{self.text}" if self.title.strip() else self.text


def read_jsonl_documents(path: str | os.PathLike[str]) -> Iterator[JsonlDocument]:
    """The documents of a JSON-lines corpus file; a line that is not an object with a string `_id` and `text`
    is an InputError naming the line."""
    p = Path(path)
    try:
        fh = p.open(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    with fh:
        try:
            lines = list(fh)
        except UnicodeDecodeError:
            raise InputError(f"{path}: not UTF-8 text; expected one JSON object per line") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{n}: not JSON ({exc.msg}); expected one object per line") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("_id"), str | int) or not isinstance(
                    obj.get("text"), str):
                raise InputError(f'{path}:{n}: expected an object with "_id" and "text" (and optional "title")')
            title = obj.get("title") or ""
            yield JsonlDocument(str(obj["_id"]), title if isinstance(title, str) else str(title), obj["text"])


def index_jsonl_documents(
    store: Store,
    path: str | os.PathLike[str],
    embedder: Any,
    model: ModelIdentity,
    collection: str = DEFAULT_COLLECTION,
    chunk_tokens: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    prune: bool = False,
    reembed: bool = False,
    batch_size: int = 32,
    progress: IndexProgress | None = None,
    query_prefix: str | None = None,
    document_prefix: str | None = None,
) -> IndexReport:
    """Index the documents of a JSON-lines corpus into `collection`, each under its `_id` with its title as
    metadata (see `index_texts`); a repeated `_id` is skipped. With `prune`, documents of the collection absent
    from the file are removed."""
    duplicates: list[str] = []

    def items() -> Iterator[tuple[str, str, dict[str, Any]]]:
        seen: set[str] = set()
        for doc in read_jsonl_documents(path):
            if doc.doc_id in seen:
                duplicates.append(doc.doc_id)
                continue
            seen.add(doc.doc_id)
            yield doc.doc_id, doc.full_text, ({"title": doc.title} if doc.title else {})

    report = index_texts(store, items(), embedder, model, collection=collection, chunk_tokens=chunk_tokens,
                         overlap=overlap, prune=prune, reembed=reembed, batch_size=batch_size, progress=progress,
                         bulk=True, query_prefix=query_prefix, document_prefix=document_prefix)
    report.skipped += [(d, "duplicate _id") for d in duplicates]
    return report
