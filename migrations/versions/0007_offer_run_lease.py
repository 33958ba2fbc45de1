"""offer run lease: owner and heartbeat, so a killed run is recognised and resumed once

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 09:10:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('offer_runs') as batch:
        batch.add_column(sa.Column('lease_owner', sa.String(length=100), nullable=True))
        batch.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('offer_runs') as batch:
        batch.drop_column('heartbeat_at')
        batch.drop_column('lease_owner')
