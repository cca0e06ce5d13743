"""Documents say whether their key is a file's path: `documents.is_file`.

File documents are now keyed by their canonical absolute path (see `embedkit.index.keys`) and shown relative to
the user's current folder; other keys (`index --jsonl` ids, texts posted to the server) stay verbatim. Earlier
rows are marked from what they hold: texts were stored with mtime 0, files with the file's mtime (texts posted
to the server before this revision also had a real mtime; they are marked as files, which only changes how an
absolute key below the current folder is shown). Keys stored relative to the folder `index` ran in are kept as
they are: the next `index` of those files from that folder adopts them under their canonical keys.

Revision ID: 0004_file_keys
Revises: 0003_keyword_bm25
Create Date: 2026-12-07
"""

from alembic import op

revision = "0004_file_keys"
down_revision = "0003_keyword_bm25"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE documents ADD COLUMN is_file boolean NOT NULL DEFAULT false")
    op.execute("UPDATE documents SET is_file = true WHERE mtime <> 0")


def downgrade() -> None:
    op.execute("ALTER TABLE documents DROP COLUMN is_file")
