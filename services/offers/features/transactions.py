"""What a member transaction is, whichever way it arrives (a CSV row, a REST body): the values the
input checks hold it to. Apart from the CSV reader (``input.py``) because that imports polars, and
the REST schema needs only these."""

TRANSACTION_TYPES = ("buy", "gift", "redeem")

# As long as REST accepts and the results table stores (a longer one failed a PostgreSQL run).
MAX_MEMBER_ID_LENGTH = 128
