"""Member features from a transaction CSV, vectorised with polars.

One lazy query over the file classifies every row (transaction, id-only, rejected with a reason),
aggregates transactions per member, and evaluates the feature registry as polars expressions, so
memory grows with the number of members (per-member aggregates), not with the number of rows,
and the same code serves a 5-row real-time request and a multi-million-row batch.

Features are named functions in ``REGISTRY``: each receives ``Aggregates`` (polars expressions
over one member's aggregate columns) and returns an expression.  Adding a feature is one
decorated function; partners choose which features they receive and under which JSON names.

Parts: ``input`` (the CSV and its rows), ``definitions`` (the registry), ``aggregate`` (per member), ``scan``
(a large file in partitions)."""
