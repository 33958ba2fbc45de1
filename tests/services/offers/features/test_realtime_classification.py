"""A request's transactions are classified exactly as the CSV's rows are (`classified_transactions`
vs `classify_rows`), so a real-time offer and a batch run see the same member."""

import random
from datetime import date

import polars as pl
import pytest

from services.offers.features.aggregate import features_of_request, member_features
from services.offers.features.input import CANONICAL, classified_transactions, classify_rows

COMPARED = ["line", "member_id", "type", "points", "revenue", "id_only", "type_norm", "reason", "kind"]


def transactions_frame(member_id, transactions):
    """The request as the CSV would hold it: string cells, line numbers from 1."""
    return pl.DataFrame(
        {"member_id": [member_id] * len(transactions), "ts": [t["ts"] for t in transactions],
         "type": [t["type"] for t in transactions], "points": [repr(float(t["points"])) for t in transactions],
         "revenue": [repr(float(t["revenue_usd"])) for t in transactions]},
        schema={c: pl.String for c in CANONICAL},
    ).with_row_index("line", offset=1)


def by_polars(member_id, transactions):
    return classify_rows(transactions_frame(member_id, transactions).lazy()).collect()


def assert_same(member_id, transactions):
    ours, theirs = classified_transactions(member_id, transactions), by_polars(member_id, transactions)
    assert ours.schema == theirs.schema
    assert ours.select(COMPARED).equals(theirs.select(COMPARED)), (ours, theirs)
    accepted = pl.col("kind") == "transaction"  # a rejected row's timestamp is never read
    # Past year 9999 in UTC polars has year 10000 and Python its last datetime: both after any as-of.
    beyond = pl.datetime(9999, 12, 31, 23, 59, 59, 999999)
    assert ours.filter(accepted)["ts"].clip(upper_bound=beyond).equals(
        theirs.filter(accepted)["ts"].clip(upper_bound=beyond))
    as_of = date(2024, 1, 5)
    mine, batch = features_of_request(ours, as_of), member_features(theirs, as_of)
    assert mine.skipped == batch[1]
    assert mine.features.equals(batch[0])
    assert [(r.line, r.member_id, r.reason) for r in mine.rejected] == \
        theirs.filter(pl.col("kind") == "rejected").select("line", "member_id", "reason").rows()


def random_timestamp(rng):
    year = rng.choice([1, 2, 4, 99, 1999, 2000, 2023, 2024, 2100, 9999])
    month, day = rng.randint(1, 12), rng.randint(1, 31)
    text = f"{year:04d}-{month:02d}-{day:02d}{rng.choice([' ', 'T'])}{rng.randint(0, 23):02d}:" \
           f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
    if rng.random() < 0.5:
        text += "." + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 6)))
    offset = rng.random()
    if offset < 0.2:
        text += "Z"
    elif offset < 0.6:
        sign = rng.choice("+-")
        text += f"{sign}{rng.randint(0, 23):02d}{rng.choice([':', ''])}{rng.randint(0, 59):02d}"
    return text


def test_generated_requests_classify_alike():
    rng = random.Random(20261206)
    for _ in range(300):
        transactions = [{"ts": random_timestamp(rng), "type": rng.choice(["buy", "GIFT", "Redeem", "bUy"]),
                         "points": rng.choice([0, 100, -500, 9600.5, 1e9, -1e9]),
                         "revenue_usd": rng.choice([0.0, 3.25, 32.0, 1e9])} for _ in range(rng.randint(1, 6))]
        assert_same(rng.choice(["F44DBBBC", " padded ", "x" * 128]), transactions)


@pytest.mark.parametrize("timestamp", [
    "0001-01-01 00:00:00+05:00",  # before year 1 in UTC
    "0001-01-01 04:59:59.999999+05:00", "0001-01-01 05:00:00+05:00",
    "9999-12-31 23:59:59-00:30",  # after year 9999 in UTC
    "2024-02-29 12:00:00", "2023-02-29 12:00:00", "2023-04-31 12:00:00",
    "2023-12-10 11:24:18.5", "2023-12-10T11:24:18.000001Z", "2023-12-10 11:24:18+0530", "2023-12-10 11:24:18-12:00",
])
def test_calendar_edges_classify_alike(timestamp):
    assert_same("M", [{"ts": timestamp, "type": "buy", "points": 1, "revenue_usd": 1.0}])


@pytest.mark.parametrize("member_id", ["\x1fM", " M\u2003", "\u3000", "M\x85", "x" * 129])
def test_member_ids_are_trimmed_alike(member_id):
    assert_same(member_id, [{"ts": "2023-12-10 11:24:18", "type": "gift", "points": 1, "revenue_usd": 1.0}])
