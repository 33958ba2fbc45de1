"""Member features: each on hand-made members; row classification; both header spellings."""

from datetime import date

import pytest

from config import DATA_DIR
from services.offers.features.definitions import REGISTRY, STANDARD_FEATURES
from services.offers.features.input import InputError
from services.offers.features.scan import compute_features

HEADER = "memberId,lastTransactionUtcTs,lastTransactionType,lastTransactionPointsBought,lastTransactionRevenueUSD\n"
AS_OF = date(2024, 1, 10)


def features_of(tmp_path, rows: str, header: str = HEADER, as_of: date = AS_OF):
    path = tmp_path / "tx.csv"
    path.write_text(header + rows)
    return compute_features(path, as_of)


def member(table, member_id):
    rows = table.features.filter(table.features["member_id"] == member_id).to_dicts()
    assert len(rows) == 1
    return rows[0]


def test_the_eight_standard_features_in_contract_order():
    assert STANDARD_FEATURES == (
        "AVG_POINTS_BOUGHT", "AVG_REVENUE_USD", "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT",
        "LAST_3_TRANSACTIONS_AVG_REVENUE_USD", "PCT_BUY_TRANSACTIONS", "PCT_GIFT_TRANSACTIONS",
        "PCT_REDEEM_TRANSACTIONS", "DAYS_SINCE_LAST_TRANSACTION")


def test_averages_include_negative_redemptions(tmp_path):
    table = features_of(tmp_path, "A,2024-01-01 10:00:00,buy,1000,10.0\n"
                                  "A,2024-01-02 10:00:00,redeem,-400,0\n"
                                  "A,2024-01-03 10:00:00,gift,300,5.0\n"
                                  "A,2024-01-04 10:00:00,buy,100,1.0\n")
    a = member(table, "A")
    assert a["AVG_POINTS_BOUGHT"] == pytest.approx((1000 - 400 + 300 + 100) / 4)
    assert a["AVG_REVENUE_USD"] == pytest.approx(16.0 / 4)
    # last 3 by timestamp: the redeem, the gift and the last buy
    assert a["LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT"] == pytest.approx((-400 + 300 + 100) / 3)
    assert a["LAST_3_TRANSACTIONS_AVG_REVENUE_USD"] == pytest.approx(6.0 / 3)
    assert (a["PCT_BUY_TRANSACTIONS"], a["PCT_GIFT_TRANSACTIONS"], a["PCT_REDEEM_TRANSACTIONS"]) == (0.5, 0.25, 0.25)
    assert a["DAYS_SINCE_LAST_TRANSACTION"] == 6


def test_last_three_is_by_timestamp_not_file_order(tmp_path):
    table = features_of(tmp_path, "B,2024-01-05 00:00:00,buy,500,5\n"
                                  "B,2020-01-01 00:00:00,buy,9900,99\n"
                                  "B,2024-01-03 00:00:00,buy,300,3\n"
                                  "B,2024-01-04 00:00:00,buy,400,4\n")
    assert member(table, "B")["LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT"] == pytest.approx(400.0)


def test_equal_timestamps_the_later_row_is_more_recent(tmp_path):
    table = features_of(tmp_path, "C,2024-01-01 00:00:00,buy,100,1\n"
                                  "C,2024-01-02 00:00:00,buy,200,1\n"
                                  "C,2024-01-02 00:00:00,buy,300,1\n"
                                  "C,2024-01-02 00:00:00,buy,400,1\n"
                                  "C,2024-01-02 00:00:00,buy,500,1\n")
    # four rows tie at the latest time; the last three in the file are 300, 400, 500
    assert member(table, "C")["LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT"] == pytest.approx(400.0)


def test_fewer_than_three_transactions_use_all(tmp_path):
    table = features_of(tmp_path, "D,2024-01-01 00:00:00,gift,100,2\nD,2024-01-02 00:00:00,buy,300,4\n")
    d = member(table, "D")
    assert d["LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT"] == pytest.approx(200.0)
    assert d["LAST_3_TRANSACTIONS_AVG_REVENUE_USD"] == pytest.approx(3.0)


def test_all_redeem_member(tmp_path):
    table = features_of(tmp_path, "E,2023-12-31 23:59:59,redeem,-100,0\nE,2023-06-01 00:00:00,REDEEM,-300,0\n")
    e = member(table, "E")
    assert e["PCT_REDEEM_TRANSACTIONS"] == 1.0 and e["PCT_BUY_TRANSACTIONS"] == 0.0
    assert e["AVG_POINTS_BOUGHT"] == -200.0 and e["AVG_REVENUE_USD"] == 0.0
    assert e["DAYS_SINCE_LAST_TRANSACTION"] == 10  # calendar days from the UTC date 2023-12-31


def test_days_are_calendar_days_from_the_utc_date(tmp_path):
    table = features_of(tmp_path, "F,2024-01-09 23:59:59,buy,1,1\n", as_of=date(2024, 1, 10))
    assert member(table, "F")["DAYS_SINCE_LAST_TRANSACTION"] == 1
    same_day = features_of(tmp_path, "F,2024-01-10 00:00:01,buy,1,1\n", as_of=date(2024, 1, 10))
    assert member(same_day, "F")["DAYS_SINCE_LAST_TRANSACTION"] == 0


def test_id_only_row_marks_a_member_without_transactions(tmp_path):
    table = features_of(tmp_path, "G,,,,\nH,2024-01-01 00:00:00,buy,1,1\n")
    assert table.skipped == {"G": "no_transactions"}
    assert table.features["member_id"].to_list() == ["H"]


def test_bad_rows_are_rejected_with_reason_and_line(tmp_path):
    table = features_of(tmp_path, (
        ",2024-01-01 00:00:00,buy,1,1\n"          # line 2: no member id
        "J,yesterday,buy,1,1\n"                   # line 3
        "J,2024-01-01 00:00:00,steal,1,1\n"       # line 4
        "J,2024-01-01 00:00:00,buy,many,1\n"      # line 5
        "J,2024-01-01 00:00:00,buy,1,\n"          # line 6
        "J,2024-01-01 00:00:00,buy,100,2.5\n"     # line 7: fine
        "K,2024-13-01 00:00:00,gift,1,1\n"        # line 8: only row of K, invalid
    ))
    assert [(r.line, r.reason) for r in table.rejected] == [
        (2, "missing member id"), (3, "invalid timestamp"), (4, "invalid transaction type"),
        (5, "invalid points"), (6, "invalid revenue"), (8, "invalid timestamp")]
    assert member(table, "J")["AVG_POINTS_BOUGHT"] == 100.0
    assert table.skipped == {"K": "no_valid_transactions"}
    assert table.rows_read == 7


def test_uppercase_header_and_misspelled_header_give_the_same_features(tmp_path):
    rows = "L,2024-01-01 00:00:00,buy,100,1\nL,2024-01-02 00:00:00,gift,200,2\n"
    a = features_of(tmp_path, rows).features.to_dicts()
    b = features_of(tmp_path, rows, header="memberId,lastTransatcionUtcTs,lastTransactionType,"
                                           "lastTransactionPointsBought,lastTransactionRevenueUSD\n").features.to_dicts()
    c = features_of(tmp_path, rows, header="MEMBER_ID,LAST_TRANSACTION_TS,LAST_TRANSACTION_TYPE,"
                                           "LAST_TRANSACTION_POINTS_BOUGHT,LAST_TRANSACTION_REVENUE_USD\n").features.to_dicts()
    assert a == b == c


def test_unknown_header_and_missing_file_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="unexpected header"):
        features_of(tmp_path, "x\n", header="id,ts,type,points,revenue\n")
    with pytest.raises(InputError, match="cannot read"):
        compute_features(tmp_path / "absent.csv", AS_OF)


def test_transaction_after_as_of_is_not_scored(tmp_path):
    table = features_of(tmp_path, "M,2024-02-01 00:00:00,buy,1,1\n", as_of=date(2024, 1, 10))
    assert table.skipped == {"M": "last_transaction_after_as_of"} and table.features.height == 0


def test_bundled_sample_shape():
    table = compute_features(DATA_DIR / "member_data.csv", date(2024, 1, 5))
    assert table.rows_read == 4335
    assert table.features.height == 890
    assert list(table.skipped.values()).count("no_transactions") == 100
    assert table.rejected_by_reason == {"missing member id": 10}


def test_adding_a_feature_is_one_function(tmp_path):
    from services.offers.features.definitions import feature

    @feature("TOTAL_TRANSACTIONS")
    def total_transactions(a):
        return a.n

    try:
        table = features_of(tmp_path, "N,2024-01-01 00:00:00,buy,1,1\nN,2024-01-02 00:00:00,buy,1,1\n")
        assert member(table, "N")["TOTAL_TRANSACTIONS"] == 2
    finally:
        REGISTRY.pop("TOTAL_TRANSACTIONS")


def test_timestamp_forms(tmp_path):
    table = features_of(tmp_path, (
        "P,2024-01-01T10:00:00,buy,1,1\n"
        "P,2024-01-01 10:00:00.5,buy,2,1\n"       # later than the first by half a second
        "P,2024-01-01 10:00:00.250,buy,3,1\n"
        "P,2024-01-01 10:00:00.1234567,buy,4,1\n"  # 7 fraction digits: invalid
        "P,2024-01-01 10:00,buy,5,1\n"             # no seconds: invalid
    ))
    assert [(r.line, r.reason) for r in table.rejected] == [(5, "invalid timestamp"), (6, "invalid timestamp")]
    p = member(table, "P")
    assert p["AVG_POINTS_BOUGHT"] == 2.0
    assert p["LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT"] == 2.0  # all three valid rows


def test_sub_second_order_decides_the_last_three(tmp_path):
    table = features_of(tmp_path, (
        "Q,2024-01-01 10:00:00.9,buy,100,1\n"
        "Q,2024-01-01 10:00:00.1,buy,200,1\n"
        "Q,2024-01-01 10:00:00.5,buy,300,1\n"
        "Q,2024-01-01 10:00:00.7,buy,400,1\n"
    ))
    assert member(table, "Q")["LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT"] == pytest.approx((100 + 300 + 400) / 3)


def test_partitioned_scan_gives_the_same_features_skips_and_rejections(tmp_path):
    """A file larger than one partition is split by member; every member still sees all its rows."""
    from services.offers.features.scan import scan_features

    rows = "".join(f"M{i % 37},2024-01-0{1 + i % 9} 0{i % 10}:00:00,{('buy', 'gift', 'redeem')[i % 3]},{i * 100},{i}\n"
                   for i in range(600))
    rows += "N1,,,,\nN2,not a date,buy,1,1\n,2024-01-01 00:00:00,buy,1,1\n"
    path = tmp_path / "tx.csv"
    path.write_text(HEADER + rows)
    whole = compute_features(path, AS_OF)
    with scan_features(path, AS_OF, read_bytes=512, partition_bytes=2048) as scan:
        assert scan.partition_count > 4
        parts = list(scan.partitions())
        assert scan.rows_read == whole.rows_read == 603
        assert scan.rejected.by_reason == {"invalid timestamp": 1, "missing member id": 1}
        assert [r.line for r in scan.rejected.sample] == [r.line for r in whole.rejected] == [603, 604]
        assert scan.members == 37 and scan.skipped_members == 2
    merged = {row["member_id"]: row for p in parts for row in p.features.to_dicts()}
    assert merged == {row["member_id"]: row for row in whole.features.to_dicts()}
    assert {m: r for p in parts for m, r in p.skipped.items()} == whole.skipped == {
        "N1": "no_transactions", "N2": "no_valid_transactions"}


def test_bytes_that_are_not_utf8_are_refused_naming_the_line(tmp_path):
    """A lossy decode would turn distinct ids (b"M\\xff", b"M\\xfe") into one member."""
    path = tmp_path / "tx.csv"
    path.write_bytes(HEADER.encode() + b"A,2024-01-01 00:00:00,buy,100,1\n" + b"M\xff,2024-01-01 00:00:00,buy,1,1\n")
    with pytest.raises(InputError, match=r"tx.csv: line 3 is not UTF-8"):
        compute_features(path, AS_OF)


def test_a_file_without_line_breaks_is_refused_before_it_is_buffered(tmp_path):
    path = tmp_path / "sparse.csv"
    with open(path, "wb") as handle:
        handle.write(HEADER.encode())
        handle.truncate(64 * 1024 * 1024)  # 64 MB of NUL bytes and no newline
    with pytest.raises(InputError, match=r"sparse.csv: line 2 is longer than 65536 bytes"):
        compute_features(path, AS_OF)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\x00" * 200_000)
    with pytest.raises(InputError, match="line 1 is longer"):
        compute_features(binary, AS_OF)


def test_a_member_id_longer_than_the_results_column_is_rejected(tmp_path):
    from services.offers.features.scan import scan_features

    long_id = "L" * 129
    path = tmp_path / "tx.csv"
    path.write_text(HEADER + f"{long_id},2024-01-01 00:00:00,buy,100,1\n{long_id},,,,\n"
                             "OK,2024-01-01 00:00:00,buy,1,1\n")
    with scan_features(path, AS_OF) as scan:
        parts = list(scan.partitions())
        assert scan.rejected.by_reason == {"member id too long": 2}
        assert all(len(r.member_id) == 128 for r in scan.rejected.sample)
    assert [m for p in parts for m in p.features["member_id"]] == ["OK"]
    assert all(long_id not in p.skipped for p in parts)
