"""The schema stays distributable by Citus with `collection_id` as the distribution column. Checked by
introspecting the migrated schema on the real embedded PostgreSQL, so tables added later are checked too:

- a table with a `collection_id` column is distributed on it (all of them co-located: same column type);
  any other table (`collections`) is a reference table, copied to every node;
- every primary key, unique constraint, unique index and exclusion constraint of a distributed table
  contains `collection_id` (Citus enforces uniqueness only within a shard);
- a foreign key between distributed tables maps `collection_id` to `collection_id` (co-located, so each
  check stays on one shard); distributed -> reference keys are allowed; reference -> distributed keys are
  refused by Citus, so there must be none;
- identity columns of distributed tables are bigint (the only identity type Citus distributes).
"""

from __future__ import annotations

from store_fixtures import *  # noqa: F403

DIST = "collection_id"


def _schema(conn):
    tables = [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
        "AND c.relname <> 'alembic_version' ORDER BY 1")]
    columns = {t: {} for t in tables}
    for t, col, typ, ident in conn.execute(
            "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attidentity FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND a.attnum > 0 AND NOT a.attisdropped"):
        if t in columns:
            columns[t][col] = (typ, ident)
    keys = conn.execute(
        """
        SELECT con.conrelid::regclass::text, con.conname, con.contype,
               ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, o)
                     JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o),
               con.confrelid::regclass::text,
               ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, o)
                     JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o)
        FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace
        WHERE n.nspname = current_schema() AND con.contype IN ('p', 'u', 'f', 'x')
        """).fetchall()
    unique_indexes = conn.execute(
        """
        SELECT t.relname, i.relname,
               ARRAY(SELECT a.attname::text FROM unnest(x.indkey::int2[]) k(n)
                     JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.n)
        FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
        JOIN pg_namespace n ON n.oid = t.relnamespace
        WHERE n.nspname = current_schema() AND x.indisunique
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)
        """).fetchall()
    return tables, columns, keys, unique_indexes


def citus_violations(conn) -> list[str]:
    """Every way the current schema breaks Citus's rules for distribution on `collection_id`."""
    tables, columns, keys, unique_indexes = _schema(conn)
    distributed = {t for t in tables if DIST in columns[t]}
    bad: list[str] = []
    types = {columns[t][DIST][0] for t in distributed}
    if len(types) > 1:
        bad.append(f"{DIST} has several types ({sorted(types)}): the tables cannot be co-located")
    for t in sorted(distributed):
        for col, (typ, ident) in columns[t].items():
            if ident and typ != "bigint":
                bad.append(f"{t}.{col}: identity column of type {typ} (Citus distributes bigint identities only)")
    for table, name, kind, cols, ref, ref_cols in keys:
        table, ref = table.strip('"'), (ref or "").strip('"')
        if kind in ("p", "u", "x") and table in distributed and DIST not in cols:
            bad.append(f"{table}: key {name} ({', '.join(cols)}) lacks {DIST}")
        if kind == "f":
            if table not in distributed and ref in distributed:
                bad.append(f"{table}: foreign key {name} from a reference table to distributed {ref}")
            elif table in distributed and ref in distributed:
                pairs = dict(zip(cols, ref_cols, strict=True))
                if pairs.get(DIST) != DIST:
                    bad.append(f"{table}: foreign key {name} to {ref} does not map {DIST} to {DIST}")
    for table, name, cols in unique_indexes:
        if table in distributed and DIST not in cols:
            bad.append(f"{table}: unique index {name} ({', '.join(cols) or 'an expression'}) lacks {DIST}")
    return bad


def test_schema_is_distributable_by_collection_id(store):
    with store.connect() as conn:
        tables, columns, _, _ = _schema(conn)
        assert {"documents", "chunks"} <= {t for t in tables if DIST in columns[t]}
        assert "collections" in tables and DIST not in columns["collections"]
        assert citus_violations(conn) == []


def test_the_check_catches_what_citus_refuses(store):
    """The rules bite: tables breaking each of them, made in a transaction that is rolled back."""
    with store.connect() as conn:
        with conn.transaction(force_rollback=True):
            conn.execute("CREATE TABLE citus_bad_key (collection_id bigint NOT NULL, term text, PRIMARY KEY (term))")
            conn.execute("CREATE TABLE citus_bad_ref (id bigint PRIMARY KEY, collection_id_ref bigint, doc bigint, "
                         "FOREIGN KEY (collection_id_ref, doc) REFERENCES documents (collection_id, id))")
            conn.execute("CREATE TABLE citus_bad_fk (collection_id bigint NOT NULL, other bigint NOT NULL, "
                         "doc bigint, FOREIGN KEY (other, doc) REFERENCES documents (collection_id, id))")
            conn.execute("CREATE TABLE citus_bad_ident (collection_id bigint NOT NULL, "
                         "n integer GENERATED ALWAYS AS IDENTITY, PRIMARY KEY (collection_id, n))")
            conn.execute("CREATE TABLE citus_bad_index (collection_id bigint NOT NULL, path text)")
            conn.execute("CREATE UNIQUE INDEX citus_bad_index_path ON citus_bad_index (path)")
            found = "\n".join(citus_violations(conn))
    for needle in ("citus_bad_key: key", "citus_bad_ref: foreign key", "citus_bad_fk: foreign key",
                   "citus_bad_ident.n: identity", "citus_bad_index: unique index"):
        assert needle in found, found
