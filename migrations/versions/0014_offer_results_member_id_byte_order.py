"""offer_results.member_id compares by bytes on PostgreSQL too (COLLATE "C")

Member ids are opaque keys. SQLite orders them by their bytes; PostgreSQL ordered them by the
database's collation (en_US puts "a" before "B", C puts "B" first), so result pages and exports
could come in a different order on each database, and `run-offers --output` could not write the
results it had just recorded (sorted by bytes) without reading them back in the database's order.
On PostgreSQL the upgrade rebuilds the primary key with the table locked: 0.19 s per 200k results
here (~1 s per million). Recording speed is the same either way on a C.UTF-8 database (COPY of
200k rows in batches of 1,000: 1.27 s with "C" and without, median of 3).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 16:30:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return  # SQLite's BINARY collation is byte order already
    # PostgreSQL rebuilds the primary key (run_id, member_id) in the new order.
    op.alter_column('offer_results', 'member_id', type_=sa.String(128, collation='C'),
                    existing_type=sa.String(128), existing_nullable=False)


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.alter_column('offer_results', 'member_id', type_=sa.String(128), existing_type=sa.String(128, collation='C'),
                    existing_nullable=False)
