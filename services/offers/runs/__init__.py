"""Offers runs: the frame every run goes through, its options and lease, recording, statistics, and the
executors that score (``local``, and ``distributed/`` on Celery workers)."""
