"""Collections: create on first index, remember the model, refuse another model (unless re-embedding)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import psycopg

from embedkit.errors import CollectionMismatchError, InputError, StoreError


@dataclass(frozen=True)
class ModelIdentity:
    """What a collection records about the model that embedded it."""

    model_name: str
    model_file: str
    model_sha256: str
    architecture: str
    dim: int
    pooling: str
    normalize: bool


@dataclass(frozen=True)
class CollectionInfo:
    """A collection row."""

    id: int
    name: str
    model: ModelIdentity
    chunk_tokens: int
    chunk_overlap: int
    query_prefix: str = ""  # prepended to queries before embedding (e5 "query: ", ...)
    document_prefix: str = ""  # prepended to chunks before embedding (the stored text has none)

    @property
    def dim(self) -> int:
        return self.model.dim

    @property
    def index_kind(self) -> str:
        """'vector' (d <= 2000), 'halfvec' (d <= 4000) or 'bit' (binary-quantized HNSW + exact re-rank)."""
        return index_kind(self.model.dim)


def index_kind(dim: int) -> str:
    """The HNSW flavour used for a dimension (pgvector limits: vector 2000, halfvec 4000 dims)."""
    return "vector" if dim <= 2000 else "halfvec" if dim <= 4000 else "bit"


_COLUMNS = (
    "id, name, model_name, model_file, model_sha256, architecture, dim, pooling, normalize, "
    "chunk_tokens, chunk_overlap, query_prefix, document_prefix"
)


def _row_to_info(row) -> CollectionInfo:
    return CollectionInfo(
        id=row[0],
        name=row[1],
        model=ModelIdentity(row[2], row[3], row[4], row[5], row[6], row[7], row[8]),
        chunk_tokens=row[9],
        chunk_overlap=row[10],
        query_prefix=row[11],
        document_prefix=row[12],
    )


def get_collection(conn: psycopg.Connection, name: str) -> CollectionInfo | None:
    """The collection called `name`, or None."""
    row = conn.execute(f"SELECT {_COLUMNS} FROM collections WHERE name = %s", (name,)).fetchone()
    return _row_to_info(row) if row else None


def require_collection(conn: psycopg.Connection, name: str) -> CollectionInfo:
    """The collection called `name`, or a StoreError listing the ones that exist."""
    check_collection_name(name)
    info = get_collection(conn, name)
    if info is None:
        rows = conn.execute("SELECT name FROM collections WHERE left(name, 1) <> %s ORDER BY name LIMIT 21",
                            (STAGING_PREFIX[0],)).fetchall()
        names = [r[0] if len(r[0]) <= 40 else display_name(r[0], 40) for r in rows]
        if len(names) > 20:
            names[20:] = ["..."]
        have = ", ".join(names) if names else "none yet; run `embedkit index PATH` first"
        raise StoreError(f"no collection named {display_name(name)} (collections: {have})")
    return info


def list_collections(conn: psycopg.Connection) -> list[tuple[CollectionInfo, int, int]]:
    """Every collection with its document and chunk counts."""
    rows = conn.execute(
        f"SELECT {', '.join('c.' + c.strip() for c in _COLUMNS.split(','))}, "
        "(SELECT count(*) FROM documents d WHERE d.collection_id = c.id), "
        "(SELECT count(*) FROM chunks k WHERE k.collection_id = c.id) FROM collections c "
        "WHERE left(c.name, 1) <> %s ORDER BY c.name", (STAGING_PREFIX[0],)
    ).fetchall()
    return [(_row_to_info(r[:13]), r[13], r[14]) for r in rows]


def mismatch(have: ModelIdentity, want: ModelIdentity) -> str | None:
    """A sentence naming the first difference between two model identities, or None if they match."""
    if have.model_sha256 != want.model_sha256:
        return f"model {have.model_file} (sha256 {have.model_sha256[:12]}), not {want.model_file} " \
               f"(sha256 {want.model_sha256[:12]})"
    for field in ("dim", "pooling", "normalize"):
        if getattr(have, field) != getattr(want, field):
            return f"{field}={getattr(have, field)}, not {getattr(want, field)}"
    return None


def check_model(info: CollectionInfo, want: ModelIdentity) -> None:
    """Refuse to use a collection with a model other than the one it was built with."""
    diff = mismatch(info.model, want)
    if diff:
        raise CollectionMismatchError(
            f"collection {display_name(info.name)} was embedded with {diff}; use another collection (-c NAME) "
            "or re-embed it on purpose with `embedkit index --reembed`"
        )


MAX_NAME_CHARS = 128


def display_name(name: str, limit: int = 60) -> str:
    """`name` quoted for a message, cut to `limit` characters (a store may hold names from before the bound)."""
    if len(name) <= limit:
        return repr(name)
    return f"{name[:limit]!r}... ({len(name)} characters)"


def check_collection_name(name: str) -> None:
    """InputError for a name no collection should get: empty, blank, longer than MAX_NAME_CHARS, with
    characters that do not print (control, zero-width, format characters), or spaces around it."""
    shown = display_name(name)
    if not name.strip():
        raise InputError(f"collection name {shown} is empty; expected a name such as 'default' or 'notes'")
    if len(name) > MAX_NAME_CHARS:
        raise InputError(f"collection name {shown} is too long; expected at most {MAX_NAME_CHARS} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InputError(f"collection name {shown} has control characters; expected a printable name")
    if not name.isprintable():
        raise InputError(f"collection name {shown} has characters that do not print; expected letters, digits "
                         "and punctuation")
    if name != name.strip():
        raise InputError(f"collection name {shown} starts or ends with a space; expected none there")


# A re-embedding is built in a collection of its own, named this prefix + the collection's name (control
# characters: no user-given name can take it), and swapped in when complete (`finish_reembed`).
STAGING_PREFIX = "\x01reembed\x01"


def _lock_name(conn: psycopg.Connection, name: str) -> None:
    """Serialise creators, re-embedders and swappers of the same name (transaction-scoped)."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('embedkit.collection:' || %s))", (name,))


def ensure_collection(
    conn: psycopg.Connection,
    name: str,
    model: ModelIdentity,
    chunk_tokens: int,
    chunk_overlap: int,
    reembed: bool = False,
    prefixes: tuple[str, str] = ("", ""),
    check_prefixes: bool = False,
) -> CollectionInfo:
    """Get or create collection `name` for `model`, with its HNSW indexes; a mismatch of models raises. A new
    collection records `prefixes` (query, document); with `check_prefixes`, an existing one whose prefixes
    differ is refused (unless re-embedding).

    With `reembed` on an existing collection, the collection to write into is its staging collection (created,
    or resumed when an interrupted re-embedding with the same model, chunking and prefixes left one); the old
    content stays as it is, and searchable, until `finish_reembed` swaps the new one in."""
    check_collection_name(name)
    with conn.transaction():
        _lock_name(conn, name)
        info = get_collection(conn, name)
        if info is None:
            return _create(conn, name, model, chunk_tokens, chunk_overlap, prefixes)
        if not reembed:
            # Same model: the collection keeps its own chunking so its documents stay comparable.
            check_model(info, model)
            if check_prefixes and (info.query_prefix, info.document_prefix) != tuple(prefixes):
                raise CollectionMismatchError(
                    f"collection {info.name!r} embeds with query prefix {info.query_prefix!r} and document prefix "
                    f"{info.document_prefix!r}, not {prefixes[0]!r} and {prefixes[1]!r}; re-embed it on purpose "
                    "with `embedkit index --reembed`"
                )
            return info
        # A staging collection is a new row (a new id): the old chunks, deleted at the swap but not yet
        # vacuumed, keep the old id, so the new partial indexes never evaluate their cast on old-dimension rows.
        stage = get_collection(conn, STAGING_PREFIX + name)
        if stage is not None:
            if mismatch(stage.model, model) is None and (stage.chunk_tokens, stage.chunk_overlap) == (
                    chunk_tokens, chunk_overlap) and (stage.query_prefix, stage.document_prefix) == tuple(prefixes):
                return stage
            conn.execute("SELECT embedkit_drop_vector_indexes(%s)", (stage.id,))
            conn.execute("DELETE FROM collections WHERE id = %s", (stage.id,))
        return _create(conn, STAGING_PREFIX + name, model, chunk_tokens, chunk_overlap, prefixes)


def is_staging(info: CollectionInfo) -> bool:
    """True for the staging collection of a re-embedding (see `ensure_collection`)."""
    return info.name.startswith(STAGING_PREFIX)


def finish_reembed(conn: psycopg.Connection, stage: CollectionInfo) -> CollectionInfo:
    """Replace a collection by its completed staging collection in one transaction (searches see the old
    content or the new, never a mix or nothing); returns the collection under its own name."""
    if not is_staging(stage):
        return stage  # the collection did not exist before: it was built in place
    name = stage.name[len(STAGING_PREFIX):]
    with conn.transaction():
        _lock_name(conn, name)
        old = get_collection(conn, name)
        if old is not None:
            conn.execute("SELECT embedkit_drop_vector_indexes(%s)", (old.id,))
            conn.execute("DELETE FROM collections WHERE id = %s", (old.id,))
        conn.execute("UPDATE collections SET name = %s WHERE id = %s", (name, stage.id))
    return replace(stage, name=name)


def _create(conn: psycopg.Connection, name: str, model: ModelIdentity, chunk_tokens: int,
            chunk_overlap: int, prefixes: tuple[str, str] = ("", "")) -> CollectionInfo:
    row = conn.execute(
        "INSERT INTO collections (name, model_name, model_file, model_sha256, architecture, dim, "
        "pooling, normalize, chunk_tokens, chunk_overlap, query_prefix, document_prefix) "
        f"VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING {_COLUMNS}",
        (name, model.model_name, model.model_file, model.model_sha256, model.architecture, model.dim,
         model.pooling, model.normalize, chunk_tokens, chunk_overlap, prefixes[0], prefixes[1]),
    ).fetchone()
    info = _row_to_info(row)
    conn.execute("SELECT embedkit_ensure_vector_indexes(%s, %s)", (info.id, model.dim))
    return info


def has_vector_indexes(conn: psycopg.Connection, collection_id: int) -> bool:
    """Whether both HNSW indexes of a collection exist."""
    n = conn.execute(
        "SELECT count(*) FROM pg_indexes WHERE indexname IN (%s, %s)",
        (f"chunks_hnsw_c{int(collection_id)}", f"documents_hnsw_c{int(collection_id)}"),
    ).fetchone()[0]
    return n == 2


def drop_vector_indexes(conn: psycopg.Connection, collection_id: int) -> None:
    """Drop a collection's HNSW indexes (before a bulk load)."""
    conn.execute("SELECT embedkit_drop_vector_indexes(%s)", (collection_id,))


def ensure_vector_indexes(conn: psycopg.Connection, collection_id: int, dim: int,
                          maintenance_work_mem: str = "512MB") -> None:
    """(Re)build a collection's HNSW indexes if missing, with enough memory for a fast build: at least
    `maintenance_work_mem`, or the server's (database's, role's) setting where that is larger."""
    with conn.transaction():
        # A graph that outgrows this memory is finished on disk several times more slowly (384 dims: 512MB holds
        # about 240,000 chunks), so a larger setting made for a large collection must not be lowered here.
        conn.execute("SELECT set_config('maintenance_work_mem', %s, true) "
                     "WHERE pg_size_bytes(current_setting('maintenance_work_mem')) < pg_size_bytes(%s)",
                     (maintenance_work_mem, maintenance_work_mem))
        conn.execute("SELECT embedkit_ensure_vector_indexes(%s, %s)", (collection_id, dim))


def drop_collection(conn: psycopg.Connection, name: str) -> bool:
    """Delete a collection, its documents, chunks and indexes (and an unfinished re-embedding of it)."""
    with conn.transaction():
        _lock_name(conn, name)
        info = get_collection(conn, name)
        if info is None:
            return False
        for victim in (info, get_collection(conn, STAGING_PREFIX + name)):
            if victim is not None:
                conn.execute("SELECT embedkit_drop_vector_indexes(%s)", (victim.id,))
                conn.execute("DELETE FROM collections WHERE id = %s", (victim.id,))
        return True
