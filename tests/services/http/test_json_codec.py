"""The batch scorer's JSON bodies: the same values as the standard library writes and reads."""

import json
import math

import pytest

from services.http import json_codec


def test_encoded_bodies_hold_the_values_the_standard_library_would_send():
    rows = [{"AVG_POINTS_BOUGHT": 2244.4, "PCT_BUY_TRANSACTIONS": 1 / 3, "tiny": 6.87352710133543e-05,
             "big": 1e16, "DAYS": 325, "none": None, "text": "Zürich \"quoted\""}]
    assert json.loads(json_codec.dumps(rows)) == json.loads(json.dumps(rows))


def test_every_float_survives_the_round_trip_exactly():
    values = [0.1, 1 / 3, 2.5e-308, 1.7976931348623157e308, -0.0, 123456789.123456789]
    assert [float(v) for v in json.loads(json_codec.dumps(values))] == values


@pytest.mark.parametrize("body, expected", [
    (b'[{"prediction": 0.5}]', [{"prediction": 0.5}]),
    # not RFC 8259, but what the standard library reads: the answer checks reject them per member
    (b'[{"prediction": Infinity}]', [{"prediction": math.inf}]),
    (b'{"prediction": 1e400}', {"prediction": math.inf}),
    (b'["\\ud800"]', ["\ud800"]),
])
def test_what_the_standard_library_reads_is_read(body, expected):
    assert json_codec.loads(body) == expected


def test_nan_is_read_as_the_standard_library_reads_it():
    assert math.isnan(json_codec.loads(b'[{"prediction": NaN}]')[0]["prediction"])


@pytest.mark.parametrize("body", [b"not json", b'{"a": 1', b"", b"\xff\xfe"])
def test_a_body_that_is_not_json_is_a_value_error(body):
    with pytest.raises(ValueError):
        json_codec.loads(body)
