"""annotation tasks record when their media URL expires

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 21:00:00

A nullable column: tasks imported before it have no expiry recorded, and the next media URL refresh signs theirs anew
(then records it). A plain ADD COLUMN, as in 0005 and 0006: no batch copy of a table other tables reference.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("annotation_tasks", sa.Column("media_url_expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # in place (SQLite >= 3.35, PostgreSQL): a batch copy of annotation_tasks would cascade into its annotations
    op.execute("ALTER TABLE annotation_tasks DROP COLUMN media_url_expires_at")
