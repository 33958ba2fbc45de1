"""The CSV input of `run-offers` and `POST /api/v1/offers` accept and reject the same transactions."""

from __future__ import annotations

from datetime import date

import pytest
from marshmallow import ValidationError

from blueprints.offers import OfferRequestSchema
from services.offers.features.scan import compute_features

HEADER = "memberId,lastTransactionUtcTs,lastTransactionType,lastTransactionPointsBought,lastTransactionRevenueUSD"
GOOD = ("2023-12-10 11:24:18", "gift", "9600", "32.0")

# (member id, ts, type, points, revenue): each differs from a good row in one field.
CASES = {
    "good": ("M", *GOOD),
    "T separator and fraction": ("M", "2023-12-10T11:24:18.123", "gift", "9600", "32.0"),
    "year 0": ("M", "0000-01-01 00:00:00", "gift", "9600", "32.0"),
    "February 30": ("M", "2023-02-30 00:00:00", "gift", "9600", "32.0"),
    "7 fraction digits": ("M", "2023-12-10 11:24:18.1234567", "gift", "9600", "32.0"),
    "Z suffix": ("M", "2023-12-10T11:24:18Z", "gift", "9600", "32.0"),
    "offset +02:00": ("M", "2023-12-10T13:24:18+02:00", "gift", "9600", "32.0"),
    "offset -0530 with fraction": ("M", "2023-12-10 05:54:18.5-0530", "gift", "9600", "32.0"),
    "offset hours 24": ("M", "2023-12-10 11:24:18+24:00", "gift", "9600", "32.0"),
    "offset without minutes": ("M", "2023-12-10 11:24:18+02", "gift", "9600", "32.0"),
    "type in capitals": ("M", "2023-12-10 11:24:18", "GIFT", "9600", "32.0"),
    "unknown type": ("M", "2023-12-10 11:24:18", "refund", "9600", "32.0"),
    "negative points (redeem)": ("M", "2023-12-10 11:24:18", "redeem", "-8200", "0.0"),
    "negative revenue (refund)": ("M", "2023-12-10 11:24:18", "buy", "100", "-1.5"),
    "points not a number": ("M", "2023-12-10 11:24:18", "gift", "lots", "32.0"),
    "points infinite": ("M", "2023-12-10 11:24:18", "gift", "inf", "32.0"),
    "revenue NaN": ("M", "2023-12-10 11:24:18", "gift", "9600", "nan"),
    "member id of 128 characters": ("M" * 128, *GOOD),
    "member id of 129 characters": ("M" * 129, *GOOD),
    "member id of 1 MB": ("M" * 1_000_000, *GOOD),
}


def rest_accepts(member_id, ts, type_, points, revenue) -> bool:
    def number(text):
        try:
            return float(text)
        except ValueError:
            return text

    body = {"member_id": member_id, "as_of": "2024-01-05",
            "transactions": [{"ts": ts, "type": type_, "points": number(points), "revenue_usd": number(revenue)}]}
    try:
        OfferRequestSchema().load(body)
    except ValidationError:
        return False
    return True


def csv_accepts(tmp_path, member_id, ts, type_, points, revenue) -> bool:
    path = tmp_path / "members.csv"
    path.write_text(f"{HEADER}\n{member_id},{ts},{type_},{points},{revenue}\n")
    table = compute_features(path, date(2024, 1, 5))
    return table.rows_read == 1 and not table.rejected


@pytest.mark.parametrize("case", list(CASES))
def test_csv_and_rest_agree(tmp_path, case):
    row = CASES[case]
    assert csv_accepts(tmp_path, *row) == rest_accepts(*row), case


def test_the_table_above_has_both_outcomes(tmp_path):
    outcomes = {rest_accepts(*row) for row in CASES.values()}
    assert outcomes == {True, False}


def test_an_offset_is_applied_so_the_same_instant_gives_the_same_features(tmp_path):
    rows = [("M", "2023-12-31 23:30:00", "buy", "10", "1.0"), ("M", "2024-01-01T01:30:00+02:00", "gift", "20", "2.0"),
            ("M", "2024-01-01 00:15:00Z", "redeem", "-5", "0.0")]
    path = tmp_path / "offsets.csv"
    path.write_text(HEADER + "\n" + "".join(",".join(r) + "\n" for r in rows))
    with_offsets = compute_features(path, date(2024, 1, 5)).features.to_dicts()
    utc = [("M", "2023-12-31 23:30:00", "buy", "10", "1.0"), ("M", "2023-12-31 23:30:00", "gift", "20", "2.0"),
           ("M", "2024-01-01 00:15:00", "redeem", "-5", "0.0")]
    path.write_text(HEADER + "\n" + "".join(",".join(r) + "\n" for r in utc))
    assert with_offsets == compute_features(path, date(2024, 1, 5)).features.to_dicts()
