"""chunk inputs as Arrow IPC bytes instead of JSON rows

Storing a chunk's members as JSON rows capped a coordinator at ~70k members/s (bench/bench_chunk_io.py,
PostgreSQL, chunks of 5,000): ~70 ms a chunk to build the dicts, encode and store ~1 MB of JSON. The
same members as Arrow IPC cost a few ms. Inputs only matter while their chunk is pending or running;
a run's chunks lose them when it ends, and a resume restores them from its input file, so an
in-flight run's JSON rows are not carried over: resume it after the upgrade.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 05:10:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('offer_run_chunks') as batch:
        batch.add_column(sa.Column('inputs', sa.LargeBinary(), nullable=True))
        batch.drop_column('rows')
    if op.get_bind().dialect.name == 'postgresql':
        # Arrow's doubles do not compress: PostgreSQL's default (try pglz, then move out of line) spent
        # 13 ms of a 14 ms insert of 5,000 members (477 KB) failing to compress them; EXTERNAL stores
        # them out of line as they are (1.5 ms).
        op.execute('ALTER TABLE offer_run_chunks ALTER COLUMN inputs SET STORAGE EXTERNAL')


def downgrade() -> None:
    with op.batch_alter_table('offer_run_chunks') as batch:
        batch.add_column(sa.Column('rows', sa.JSON(), nullable=False, server_default='[]'))
        batch.drop_column('inputs')
