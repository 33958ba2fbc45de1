"""@operation runs what it documents: the declared schemas load the input and dump the answer."""

from flask import Flask, Response
from marshmallow import Schema, fields

from blueprints.declare import declared, operation
from blueprints.errors import register_error_handlers


class Query(Schema):
    limit = fields.Integer(required=True)


class Body(Schema):
    name = fields.String(required=True)


class Answer(Schema):
    shown = fields.String()  # "hidden" is not declared: the dump leaves it out


def app_with(view, rule, methods):
    app = Flask(__name__)
    register_error_handlers(app)
    app.add_url_rule(rule, view_func=view, methods=methods)
    return app.test_client()


def test_the_declared_query_is_loaded_and_the_answer_dumped_with_the_declared_schema():
    seen = []

    @operation(summary="s", tag="t", query=Query(), response=Answer())
    def view(query):
        seen.append(query)
        return {"shown": "yes", "hidden": "secret"}

    client = app_with(view, "/q", ["GET"])
    response = client.get("/q?limit=7")
    assert response.status_code == 200 and response.get_json() == {"shown": "yes"} and seen == [{"limit": 7}]
    bad = client.get("/q?limit=x")
    assert bad.status_code == 400 and "limit" in bad.get_json()["details"]
    assert declared(view).query.fields["limit"]  # the same object documents it


def test_the_declared_body_is_loaded_with_its_message_and_a_check_before_loading():
    def cap(raw):
        if len(raw.get("name", "")) > 5:
            from services.errors import InvalidRequest

            raise InvalidRequest("Too long.", details={"name": ["at most 5"]})

    @operation(summary="s", tag="t", body=Body(), response=Answer(), invalid_message="Invalid thing.", before_load=cap)
    def view(body):
        return {"shown": body["name"]}

    client = app_with(view, "/b", ["POST"])
    assert client.post("/b", json={"name": "ok"}).get_json() == {"shown": "ok"}
    missing = client.post("/b", json={})
    assert missing.status_code == 400 and missing.get_json()["error"] == "Invalid thing."
    assert client.post("/b", json={"name": "toolong"}).get_json()["error"] == "Too long."


def test_a_response_object_passes_through_undumped():
    @operation(summary="s", tag="t", response=Answer())
    def view():
        return Response("a,b\n", mimetype="text/csv")

    answer = app_with(view, "/r", ["GET"]).get("/r")
    assert answer.mimetype == "text/csv" and answer.data == b"a,b\n"
