"""schemathesis against a live gateway with our own OpenAPI document: no 5xx, every error enveloped."""
from __future__ import annotations

import json

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from gateway.openapi import openapi_document

from .live import LiveGateway

schema = schemathesis.openapi.from_dict(openapi_document())
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


@pytest.fixture(scope="module")
def live():
    with LiveGateway(keepalive_interval=5) as servers:
        yield servers


def test_openapi_document_is_served(live):
    response = requests.get(f"{live.url}/openapi.json", timeout=5)
    assert response.status_code == 200
    assert response.json()["paths"].keys() == openapi_document()["paths"].keys()


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_never_5xx_and_errors_are_enveloped(case, live):
    response = case.call(base_url=live.url, timeout=10)
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        error = json.loads(response.text)["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["type"], str)
        assert "param" in error and "code" in error
        if response.status_code == 400 and case.operation.path == "/v1/responses" \
                and error["code"] not in ("invalid_json",) and "body" not in error["message"]:
            assert error["param"], error
