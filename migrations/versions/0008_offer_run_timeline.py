"""offer run timeline: members recorded over time, for the run report's progress chart

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 11:10:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('offer_runs') as batch:
        batch.add_column(sa.Column('timeline', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('offer_runs') as batch:
        batch.drop_column('timeline')
