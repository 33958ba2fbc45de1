"""Business logic. Nothing in this package imports Flask: views and CLI commands call in here."""
