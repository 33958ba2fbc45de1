"""The reference partner: its formulas, and its standalone keep-alive server."""
