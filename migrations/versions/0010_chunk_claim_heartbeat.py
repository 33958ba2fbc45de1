"""chunk claim heartbeat: when the worker holding a chunk last said it is still at it

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 03:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('offer_run_chunks') as batch:
        batch.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('offer_run_chunks') as batch:
        batch.drop_column('heartbeat_at')
