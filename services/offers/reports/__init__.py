"""Reading recorded runs: REST queries with keyset pagination, and the run report (data, HTML, cached pages)."""
