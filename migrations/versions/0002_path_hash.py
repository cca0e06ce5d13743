"""Documents are unique by an md5 of their path, so a path of any length can be stored.

The b-tree of UNIQUE (collection_id, path) refused paths beyond about 2,700 bytes (a third of a page), which
stopped a whole folder from indexing. Lookups by path add `md5(path) = md5(%s)` to use the new index.

Revision ID: 0002_path_hash
Revises: 0001
Create Date: 2026-12-07
"""

from alembic import op

revision = "0002_path_hash"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE documents DROP CONSTRAINT IF EXISTS documents_collection_id_path_key")
    op.execute("CREATE UNIQUE INDEX IF NOT EXISTS documents_path_md5 ON documents (collection_id, md5(path))")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS documents_path_md5")
    op.execute("ALTER TABLE documents ADD CONSTRAINT documents_collection_id_path_key UNIQUE (collection_id, path)")
