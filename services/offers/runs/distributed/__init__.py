"""Distributed runs: the coordinator, the chunk table's writes, the chunk task a worker runs, and the
Celery app."""
