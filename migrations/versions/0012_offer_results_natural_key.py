"""offer_results keyed by (run_id, member_id): the surrogate id column goes

A member has one result per run, and every reader finds results by run and member (keyset pages by
member id), never by the surrogate id. Its sequence and index cost ~8 ms of a 45 ms COPY of 5,000
results on PostgreSQL (bench/bench_chunk_io.py); the unique constraint on (run_id, member_id)
becomes the primary key.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 05:20:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('offer_results') as batch:
        batch.drop_constraint('uq_offer_results_run_member', type_='unique')
        batch.drop_column('id')  # its primary key goes with it
        batch.create_primary_key('pk_offer_results', ['run_id', 'member_id'])


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.drop_constraint('pk_offer_results', 'offer_results', type_='primary')
        op.execute('ALTER TABLE offer_results ADD COLUMN id SERIAL PRIMARY KEY')
        op.create_unique_constraint('uq_offer_results_run_member', 'offer_results', ['run_id', 'member_id'])
        return
    with op.batch_alter_table('offer_results', recreate='always') as batch:
        batch.drop_constraint('pk_offer_results', type_='primary')
        batch.add_column(sa.Column('id', sa.Integer(), nullable=True))
        batch.create_unique_constraint('uq_offer_results_run_member', ['run_id', 'member_id'])
    # SQLite: number the rows, then rebuild with id as the primary key.
    op.execute('UPDATE offer_results SET id = rowid')
    with op.batch_alter_table('offer_results', recreate='always') as batch:
        batch.alter_column('id', existing_type=sa.Integer(), nullable=False)
        batch.create_primary_key('offer_results_pkey', ['id'])
