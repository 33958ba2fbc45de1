"""submitted offer runs: runs started over REST or the web view, queued for a coordinator worker

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 11:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('offer_runs') as batch:
        batch.add_column(sa.Column('source', sa.String(8), nullable=False, server_default='cli'))
        batch.add_column(sa.Column('requested_by', sa.String(16), nullable=True))
        batch.add_column(sa.Column('idempotency_key', sa.String(200), nullable=True))
        batch.add_column(sa.Column('use_batch', sa.Boolean(), nullable=True))
        batch.add_column(sa.Column('cancel_requested_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('input_bytes', sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column('input_name', sa.String(255), nullable=True))
        batch.create_index('ux_offer_runs_idempotency', ['requested_by', 'idempotency_key'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('offer_runs') as batch:
        batch.drop_index('ux_offer_runs_idempotency')
        for column in ('input_name', 'input_bytes', 'cancel_requested_at', 'use_batch', 'idempotency_key', 'requested_by',
                       'source'):
            batch.drop_column(column)
