"""offer run status: room for completed_with_failures; past runs with failed members relabelled

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 05:40:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('offer_runs') as batch:
        batch.alter_column('status', existing_type=sa.String(length=16), type_=sa.String(length=32),
                           existing_nullable=False)
    # A run with failed members was recorded "succeeded" before this status existed: say what happened.
    op.execute("UPDATE offer_runs SET status = 'completed_with_failures' "
               "WHERE status = 'succeeded' AND members_failed > 0")


def downgrade() -> None:
    op.execute("UPDATE offer_runs SET status = 'succeeded' WHERE status = 'completed_with_failures'")
    with op.batch_alter_table('offer_runs') as batch:
        batch.alter_column('status', existing_type=sa.String(length=32), type_=sa.String(length=16),
                           existing_nullable=False)
