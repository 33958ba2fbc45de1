"""One declaration of a member's result (services/offers/result_shape.py), and every view of it agrees."""

from sqlalchemy import BigInteger, Float, Integer, String, Text

from services.offers.result_shape import EXPORT_COLUMNS, RESULT_FIELDS, polars_schema
from services.tables import OfferResult

SQL_KINDS = {Float: float, Integer: int, String: str, Text: str}
NOT_RESULT_FIELDS = {"id", "run_id", "extra_features"}  # keys and the registry's extra features


def test_the_table_has_exactly_the_declared_columns_with_their_types_and_nullability():
    table = OfferResult.__table__
    declared = {f.column: f for f in RESULT_FIELDS}
    assert set(table.columns.keys()) - NOT_RESULT_FIELDS == set(declared)
    for name, field in declared.items():
        column = table.columns[name]
        assert SQL_KINDS[type(column.type)] is field.kind, name
        assert column.nullable == field.nullable, name


def test_exports_parquet_and_rest_derive_from_the_declaration(client):
    assert EXPORT_COLUMNS == [f.name for f in RESULT_FIELDS]
    import polars as pl

    types = polars_schema()
    assert list(types) == EXPORT_COLUMNS
    assert types["DAYS_SINCE_LAST_TRANSACTION"] == pl.Int64 and types["offer"] == pl.String
    spec = client.get("/openapi.json").get_json()
    properties = spec["components"]["schemas"]["OfferResult"]["properties"]
    assert list(properties) == EXPORT_COLUMNS
    assert properties["DAYS_SINCE_LAST_TRANSACTION"]["type"] == "integer"
    assert properties["status"]["enum"] == ["scored", "skipped", "failed"]


def test_the_run_record_is_declared_once_and_the_table_holds_every_key(client, db_session):
    from datetime import date, datetime

    from sqlalchemy import JSON, Date, DateTime

    from services.offers.result_shape import RUN_FIELDS
    from services.offers.runs.recording import create_run, run_record
    from services.tables import OfferRun

    kinds = {Integer: int, BigInteger: int, String: str, Text: str, Date: date, DateTime: datetime, JSON: dict}
    table = OfferRun.__table__
    for field in RUN_FIELDS:
        if field.derived:
            assert field.name not in table.columns, field.name
            continue
        column = table.columns[field.name]
        assert kinds[type(column.type)] is field.kind, field.name
        assert column.nullable == field.nullable, field.name
    run = create_run(db_session, partner="reference", input_path="x.csv", input_sha256="0" * 64,
                     as_of=date(2024, 1, 5), concurrency=4)
    record = run_record(run)
    assert list(record) == [f.name for f in RUN_FIELDS]
    assert record["as_of"] == "2024-01-05" and record["status"] == "running"
    assert record["started_at"].endswith("+00:00") and record["finished_at"] is None
    spec = client.get("/openapi.json").get_json()
    properties = spec["components"]["schemas"]["OfferRun"]["properties"]
    assert list(properties) == [f.name for f in RUN_FIELDS]
    assert properties["started_at"]["format"] == "date-time" and "abandoned" in properties["status"]["enum"]
