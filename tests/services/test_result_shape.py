"""One declaration of a member's result (services/offers/result_shape.py), and every view of it agrees."""

from sqlalchemy import Float, Integer, String, Text

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
