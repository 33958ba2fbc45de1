"""distributed offer runs: chunk tasks (features, status, attempts, step statistics) and run mode

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 11:30:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('offer_runs') as batch:
        batch.add_column(sa.Column('mode', sa.String(length=16), nullable=False, server_default='local'))
        batch.add_column(sa.Column('chunk_size', sa.Integer(), nullable=True))
    op.create_table(
        'offer_run_chunks',
        sa.Column('run_id', sa.Integer(), sa.ForeignKey('offer_runs.id', ondelete='CASCADE'), nullable=False),
        sa.Column('chunk_no', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('members', sa.Integer(), nullable=False),
        sa.Column('rows', sa.JSON(), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('task_id', sa.String(length=64), nullable=True),
        sa.Column('worker', sa.String(length=200), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('stats', sa.JSON(), nullable=True),
        sa.Column('queued_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('run_id', 'chunk_no'),
    )
    op.create_index('ix_offer_run_chunks_run_status', 'offer_run_chunks', ['run_id', 'status'])


def downgrade() -> None:
    op.drop_index('ix_offer_run_chunks_run_status', table_name='offer_run_chunks')
    op.drop_table('offer_run_chunks')
    with op.batch_alter_table('offer_runs') as batch:
        batch.drop_column('chunk_size')
        batch.drop_column('mode')
