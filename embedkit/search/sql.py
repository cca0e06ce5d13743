"""SQL pieces shared by search and similar: the typed distance expression of a collection (which must
match its partial HNSW index expression exactly for the planner to use the index), filters, and the
per-query HNSW settings."""

from __future__ import annotations

import fnmatch
import json
import math
import posixpath
from pathlib import Path
from typing import Any

import psycopg

from embedkit.errors import InputError
from embedkit.index.keys import typed_keys
from embedkit.store.collections import CollectionInfo

DEFAULT_EF_SEARCH = 100
MAX_K = 1000  # pgvector caps hnsw.ef_search at 1000
RERANK_FACTOR = 10  # candidates per result fetched from the binary-quantized index before exact re-ranking


def index_order_expr(info: CollectionInfo, column: str) -> str:
    """The ORDER BY expression served by the collection's HNSW index (`%(q)s` is the query vector).

    `info.id` and `info.dim` are integers from our own table, so formatting them in is safe; they must
    be literals for the planner to match the partial index predicate and its typed expression."""
    d = int(info.dim)
    kind = info.index_kind
    if kind == "vector":
        return f"{column}::vector({d}) <=> %(q)s::vector({d})"
    if kind == "halfvec":
        return f"{column}::halfvec({d}) <=> %(q)s::halfvec({d})"
    return f"binary_quantize({column})::bit({d}) <~> binary_quantize(%(q)s::vector)::bit({d})"


def exact_distance_expr(column: str) -> str:
    """Exact cosine distance (used for scores and for re-ranking binary-quantized candidates)."""
    return f"{column} <=> %(q)s::vector"


def glob_to_like(glob: str) -> str:
    """A shell glob over stored paths as a LIKE pattern (escape character `\\`). A glob without wildcards
    means the path itself or anything below it."""
    if not any(ch in glob for ch in "*?["):
        base = glob.rstrip("/")
        return _like_escape(base) + "%" if base else "%"
    if "[" in glob:
        raise InputError(f"--path {glob!r}: character classes [...] are not supported; use * and ?")
    out = []
    for ch in glob:
        out.append("%" if ch == "*" else "_" if ch == "?" else _like_escape(ch))
    return "".join(out)


def _like_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def path_likes(typed: str) -> list[str]:
    """LIKE patterns for the stored keys a `--path` value selects, as the user typed it: a key or folder as
    typed (verbatim keys, keys shown relative to the current folder) or as a path from the current folder
    (files are keyed by absolute path, see `embedkit.index.keys`); a glob likewise, as typed and below the
    current folder. A folder means itself and everything below it."""
    if any(ch in typed for ch in "*?["):
        likes = [glob_to_like(typed)]
        if not typed.startswith("/"):
            likes.append(glob_to_like(posixpath.normpath(posixpath.join(Path.cwd().resolve().as_posix(), typed))))
        return likes
    base = typed.rstrip("/")
    if not base:
        return ["%"]
    likes = []
    for key in typed_keys(base):
        likes += [_like_escape(key), _like_escape(key.rstrip("/")) + "/%"]
    return likes


def path_matches(path: str, glob: str) -> bool:
    """Python twin of glob_to_like (folder prefix or fnmatch), for checks outside SQL."""
    if not any(ch in glob for ch in "*?["):
        base = glob.rstrip("/")
        return path == base or path.startswith(base + "/") or not base
    return fnmatch.fnmatchcase(path, glob)


def document_filter(
    info: CollectionInfo, path_glob: str | None, metadata: dict[str, Any] | None, params: dict[str, Any]
) -> str:
    """A SQL condition on chunk alias `c` restricting it to documents matching the filters ('' if none)."""
    conds = []
    if path_glob:
        likes = path_likes(path_glob)
        alts = []
        for i, like in enumerate(likes):
            params[f"path_like{i}"] = like
            alts.append(f"d.path LIKE %(path_like{i})s ESCAPE '\\'")
        conds.append("(" + " OR ".join(alts) + ")")
    if metadata:
        params["meta"] = json.dumps(metadata)
        conds.append("d.metadata @> %(meta)s::jsonb")
    if not conds:
        return ""
    return (
        f" AND c.document_id IN (SELECT d.id FROM documents d WHERE d.collection_id = {int(info.id)} AND "
        + " AND ".join(conds)
        + ")"
    )


def set_hnsw(conn: psycopg.Connection, k: int, ef_search: int | None, filtered: bool) -> None:
    """Per-transaction HNSW settings: ef_search >= k, and iterative scans when a filter may drop rows."""
    ef = max(int(ef_search or DEFAULT_EF_SEARCH), min(k, MAX_K))
    if not 1 <= ef <= MAX_K:
        raise InputError(f"ef_search must be between 1 and {MAX_K}, got {ef}")
    conn.execute(f"SET LOCAL hnsw.ef_search = {ef}")
    if filtered:
        conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")


def parse_metadata_filters(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`key=value` pairs (value parsed as JSON when it is JSON, else a string) as a containment object.

    Values PostgreSQL's jsonb cannot hold (NaN, infinities, numbers out of range, NUL characters) and
    absurdly deep nesting are an InputError naming the filter."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        shown = repr(item) if len(item) <= 60 else f"{item[:60]!r}... ({len(item)} characters)"
        if not sep or not key:
            raise InputError(f"--meta {shown}: expected KEY=VALUE")
        try:
            value = json.loads(raw, parse_constant=_refuse_constant)
        except json.JSONDecodeError:
            value = raw
        except RecursionError:
            raise InputError(f"--meta {shown}: the value is nested too deeply; expected a flat JSON value") from None
        except ValueError as e:
            raise InputError(f"--meta {shown}: {e}") from None
        problem = _unstorable({key: value})
        if problem:
            raise InputError(f"--meta {shown}: {problem}")
        out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number PostgreSQL can store; expected a finite number, a string, "
                     "true, false or null")


def _unstorable(value: Any) -> str | None:
    """Why jsonb cannot hold `value` (a parsed JSON value), or None."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return "the number is out of range; expected a finite number"
        if isinstance(v, str) and "\x00" in v:
            return "PostgreSQL text cannot hold the NUL character (\\u0000); expected text without it"
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return None
