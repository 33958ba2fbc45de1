"""The partner registry: TOML validation, secrets from the environment, and the partner client."""

import pytest
import responses

from config import DATA_DIR
from services.errors import NotFound, UpstreamInvalid
from services.offers.partners.client import PartnerClient
from services.offers.partners.config import PartnerConfigError
from services.offers.partners.registry import load_registry

SECOND = """
[partners.acme]
base_url = "https://acme.test/api"
ping_path = "/health"
ats_path = "/v2/ats"
resp_path = "/v2/resp"
offer_path = "/v2/offer"
retries = 0
max_concurrency = 4

[partners.acme.features]
avg_points = "AVG_POINTS_BOUGHT"
days = "DAYS_SINCE_LAST_TRANSACTION"

[partners.acme.fields]
prediction = "score"
ats = "ats"
resp = "resp"
offer = "offer_code"

[partners.acme.headers]
Authorization = "ACME_TOKEN"
"""


def write(tmp_path, text):
    path = tmp_path / "partners.toml"
    path.write_text(text)
    return path


def test_bundled_registry_defines_the_reference_partner():
    registry = load_registry(DATA_DIR / "partners.toml")
    ref = registry.get("reference")
    assert ref.base_url == "http://127.0.0.1:8000/partners/reference"
    assert len(ref.features) == 8


def test_unknown_partner_is_404_partner_not_found():
    with pytest.raises(NotFound) as info:
        load_registry(DATA_DIR / "partners.toml").get("nobody")
    assert info.value.code == "partner_not_found"


def test_every_problem_is_reported_with_partner_and_key(tmp_path):
    text = SECOND.replace('"https://acme.test/api"', '"ftp://x"').replace('"/v2/ats"', '"v2/ats"')
    text = text.replace('days = "DAYS_SINCE_LAST_TRANSACTION"', 'days = "DAYS_UNTIL_CHRISTMAS"')
    text += "\ncolour = 'blue'\n"
    with pytest.raises(PartnerConfigError) as info:
        load_registry(write(tmp_path, text))
    problems = "\n".join(info.value.problems)
    assert "partners.acme.base_url" in problems and "partners.acme.ats_path" in problems
    assert "DAYS_UNTIL_CHRISTMAS" in problems


def test_invalid_toml_is_reported(tmp_path):
    with pytest.raises(PartnerConfigError, match="not valid TOML"):
        load_registry(write(tmp_path, "[partners\n"))


def test_header_secrets_come_from_the_environment(tmp_path, monkeypatch):
    registry = load_registry(write(tmp_path, SECOND))
    assert "secret" not in (tmp_path / "partners.toml").read_text()
    monkeypatch.delenv("ACME_TOKEN", raising=False)
    with pytest.raises(PartnerConfigError, match="ACME_TOKEN"):
        PartnerClient(registry.get("acme"))
    monkeypatch.setenv("ACME_TOKEN", "Bearer secret")
    client = PartnerClient(registry.get("acme"))
    with responses.RequestsMock() as mock:
        mock.get("https://acme.test/api/health", json={"ok": True})
        client.ping()
        assert mock.calls[0].request.headers["Authorization"] == "Bearer secret"


def test_a_header_secret_can_be_a_mounted_file_named_by_its_FILE_variable(tmp_path, monkeypatch):
    registry = load_registry(write(tmp_path, SECOND))
    token = tmp_path / "acme_token"
    token.write_text("Bearer from-a-file\n")  # the trailing newline is not part of the value
    monkeypatch.delenv("ACME_TOKEN", raising=False)
    monkeypatch.setenv("ACME_TOKEN_FILE", str(token))
    client = PartnerClient(registry.get("acme"))
    with responses.RequestsMock() as mock:
        mock.get("https://acme.test/api/health", json={"ok": True})
        client.ping()
        assert mock.calls[0].request.headers["Authorization"] == "Bearer from-a-file"
    monkeypatch.setenv("ACME_TOKEN_FILE", str(tmp_path / "absent"))
    with pytest.raises(PartnerConfigError, match="ACME_TOKEN_FILE=.*absent.*cannot read"):
        PartnerClient(registry.get("acme"))


def test_registry_readiness_names_what_makes_the_partners_unusable(tmp_path, monkeypatch):
    from services.offers.partners.registry import registry_readiness

    path = write(tmp_path, SECOND)
    monkeypatch.setenv("ACME_TOKEN", "t")
    assert registry_readiness(path, None, "acme")() is None
    assert "'acme2' (COURIER_OFFERS_DEFAULT_PARTNER) is not in the registry" in registry_readiness(path, None,
                                                                                                  "acme2")()
    monkeypatch.delenv("ACME_TOKEN")
    assert "ACME_TOKEN not set" in registry_readiness(path, None, "acme")()
    assert "cannot read" in registry_readiness(tmp_path / "absent.toml", None, "acme")()


def test_second_partner_gets_its_own_paths_and_field_names(tmp_path, monkeypatch):
    monkeypatch.setenv("ACME_TOKEN", "t")
    client = PartnerClient(load_registry(write(tmp_path, SECOND)).get("acme"))
    features = {"AVG_POINTS_BOUGHT": 10.0, "DAYS_SINCE_LAST_TRANSACTION": 3, "AVG_REVENUE_USD": 1.0}
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        mock.post("https://acme.test/api/v2/ats", json={"score": 5.0},
                  match=[responses.matchers.json_params_matcher({"avg_points": 10.0, "days": 3})])
        mock.post("https://acme.test/api/v2/offer", json={"offer_code": "GOLD"},
                  match=[responses.matchers.json_params_matcher({"ats": 5.0, "resp": 0.5})])
        assert client.predict_ats(features) == 5.0
        assert client.assign_offer(5.0, 0.5) == "GOLD"


@pytest.mark.parametrize("body", [{"score": "high"}, {"score": None}, {}, [1], {"score": float("inf")}])
def test_unusable_partner_answers_are_upstream_invalid(tmp_path, monkeypatch, body):
    import json

    monkeypatch.setenv("ACME_TOKEN", "t")
    client = PartnerClient(load_registry(write(tmp_path, SECOND)).get("acme"))
    with responses.RequestsMock() as mock:
        mock.post("https://acme.test/api/v2/ats", body=json.dumps(body) if body != {"score": float("inf")}
                  else '{"score": Infinity}', content_type="application/json")
        with pytest.raises(UpstreamInvalid):
            client.predict_ats({"AVG_POINTS_BOUGHT": 1.0, "DAYS_SINCE_LAST_TRANSACTION": 1})


def test_a_binary_registry_is_a_config_error_not_a_traceback(tmp_path):
    path = tmp_path / "partners.toml"
    path.write_bytes(b"\xe1\x00\xff" * 50)
    with pytest.raises(PartnerConfigError, match="not UTF-8"):
        load_registry(path)


def test_credentials_in_a_base_url_are_never_displayed(tmp_path):
    text = (DATA_DIR / "partners.toml").read_text().replace(
        '"{service}/partners/reference"', '"http://bob:s3cret@127.0.0.1:1/partners/reference"')
    config = load_registry(write(tmp_path, text)).get("reference")
    assert config.display_url == "http://***@127.0.0.1:1/partners/reference"
    assert "s3cret" not in config.display_url


def test_the_registry_schema_names_partner_key_and_problem_for_everything_wrong_at_once():
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "fixtures" / "bad_partners.toml"
    with pytest.raises(PartnerConfigError) as info:
        load_registry(path)
    assert sorted(info.value.problems) == sorted([
        "partners.acme.base_url: must be an http(s) URL, got 'ftp://***@x'",  # the password never shown
        "partners.acme.ats_path: must be a path starting with '/', got 'nope'",
        "partners.acme.retries: must be a whole number from 0 to 10, got 99",
        "partners.acme.max_concurrency: must be a positive integer, got 1.5",
        "partners.acme.batch.resp_path: must be a path starting with '/', got 3",
        "partners.acme.batch.offer_path: is required",
        "partners.acme.batch.max_size: must be a positive integer, got 0",
        "partners.acme.colour: unknown key",
        "partners.acme.features.days: unknown feature 'DAYS_UNTIL_CHRISTMAS' (known: AVG_POINTS_BOUGHT, "
        "AVG_REVENUE_USD, LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT, LAST_3_TRANSACTIONS_AVG_REVENUE_USD, "
        "PCT_BUY_TRANSACTIONS, PCT_GIFT_TRANSACTIONS, PCT_REDEEM_TRANSACTIONS, DAYS_SINCE_LAST_TRANSACTION)",
        "partners.acme.fields: unknown key(s) ['bogus']",
        "partners.beta.ats_path: is required",
        "partners.beta.resp_path: is required",
        "partners.beta.offer_path: is required",
        "partners.beta.features: is required",
    ])


def test_each_partner_has_its_own_answer_cap_on_both_clients(tmp_path, monkeypatch):
    from services.offers.partners.client import batch_policy

    monkeypatch.setenv("ACME_TOKEN", "t")
    registry = load_registry(write(tmp_path, SECOND.replace("max_concurrency = 4", "max_concurrency = 4\n"
                                                                                   "max_answer_bytes = 2048")))
    acme = registry.get("acme")
    assert acme.max_answer_bytes == 2048 and batch_policy(acme, 4).max_answer_bytes == 2048
    assert load_registry(DATA_DIR / "partners.toml").get("reference").max_answer_bytes == 4 * 1024 * 1024
    with responses.RequestsMock() as mock:
        mock.post("https://acme.test/api/v2/ats", json={"score": 1.0, "pad": "x" * 3000})
        with pytest.raises(UpstreamInvalid, match="over the 2,048-byte cap"):
            PartnerClient(acme).predict_ats({"AVG_POINTS_BOUGHT": 1.0, "DAYS_SINCE_LAST_TRANSACTION": 1})
    with pytest.raises(PartnerConfigError, match="partners.acme.max_answer_bytes: must be a whole number of bytes"):
        load_registry(write(tmp_path, SECOND.replace("max_concurrency = 4", "max_concurrency = 4\n"
                                                                             "max_answer_bytes = 10")))
