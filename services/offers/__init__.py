"""Loyalty offers: member features, partner registry and clients, the scoring pipeline, run records."""
