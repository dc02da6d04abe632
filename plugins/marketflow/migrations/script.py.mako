"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from __future__ import annotations

from alembic import op

from marketflow.migrations import run_sql_files

revision = "${up_revision}"
down_revision = "${down_revision}"

# The include/sql files this revision applies, in order, with their sha256 (`sha256sum include/sql/<file>`).
# A file is released with its revision: never edit it afterwards, write the next change as a new revision.
SQL_FILES = {
}


def upgrade() -> None:
    run_sql_files(SQL_FILES)


def downgrade() -> None:
    # Undo exactly what SQL_FILES did, with op.execute("..."); say here what data a downgrade destroys.
    raise NotImplementedError("the downgrade of revision ${up_revision} is not written yet")
