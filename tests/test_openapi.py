"""/openapi.json describes every route; schemathesis runs all of it against a live gateway.

The gateway has a store (sqlite in a tmp dir) and the inspector, so every route exists. Beyond
schemathesis' own checks (no 5xx, status codes, content types and bodies as documented, valid data
accepted and invalid data refused), every error must be OpenAI's envelope. The stateful run follows
the document's links (create a response or conversation, then read, page, cancel and delete it), so
the stored endpoints are also tested with ids that exist.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from gateway.app import create_app
from gateway.openapi import openapi_document

from .conftest import gateway_config
from .live import LiveGateway

# The WebSocket upgrade (GET /v1/responses) speaks another protocol: tests/test_websocket.py drives it.
schema = schemathesis.openapi.from_dict(openapi_document()).exclude(method="GET", path_regex="^/(v1/)?responses$")
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
schema.config.checks.update(excluded_check_names=["positive_data_acceptance"])  # valid_requests_accepted instead
# Per operation (about 50 of them, the unversioned aliases included): the whole file runs in well under a minute.
_EXAMPLES = 10
# Derandomized: the same examples on every run, so a red CI means a real change, never a new draw.
_SETTINGS = settings(deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    tmp = tmp_path_factory.mktemp("openapi")
    with LiveGateway(keepalive_interval=5, store={"url": f"sqlite:{tmp / 'store.db'}"},
                     debug={"inspector": True, "capture_dir": str(tmp / "captures")}) as servers:
        yield servers


def test_document_describes_every_route() -> None:
    """A route without a description (or a description without a route) fails here: add it to gateway/openapi.py."""
    config = gateway_config("http://127.0.0.1:9/v1", debug={"inspector": True})
    app = create_app(config)
    registered = {(route.method, route.resource.canonical) for route in app.router.routes()
                  if route.method != "HEAD" and route.resource is not None}  # aiohttp adds HEAD to each GET
    described = {(method.upper(), path) for path, item in openapi_document()["paths"].items()
                 for method in item if method in ("get", "post", "put", "patch", "delete")}
    assert registered - described == set(), "routes missing from gateway/openapi.py"
    assert described - registered == set(), "described in gateway/openapi.py but not routed"


def test_openapi_document_is_served(live: LiveGateway) -> None:
    response = requests.get(f"{live.url}/openapi.json", timeout=5)
    assert response.status_code == 200
    assert response.json() == json.loads(json.dumps(openapi_document()))


@schemathesis.check
def errors_are_enveloped(ctx: Any, response: Any, case: Any) -> None:
    """Every 4xx/5xx is OpenAI's error envelope; a refused /v1/responses body names the `param` at fault."""
    if response.status_code < 400:
        return
    error = json.loads(response.text)["error"]
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str), error
    assert "param" in error and "code" in error, error
    if response.status_code == 400 and case.operation.path == "/v1/responses" \
            and error["code"] not in ("invalid_json",) and "body" not in error["message"]:
        assert error["param"], error


def _refused_for_state(case: Any, error: dict[str, Any]) -> bool:
    """400s about what is stored, not about the request (as at OpenAI); a document cannot say which ids exist
    or how they were created: a missing previous response, cancelling a response that was not background,
    streaming one that was not created with `stream`. Nor can it pair a tool output with its call."""
    path = case.operation.path.removeprefix("/v1")
    return (error["code"] == "previous_response_not_found"
            or error["message"].startswith("No tool call found for function call output")
            or (path == "/responses/{response_id}/cancel" and "background=true" in error["message"])
            or (path == "/responses/{response_id}" and error["param"] == "stream"
                and "created it with stream=true" in error["message"]))


@schemathesis.check
def valid_requests_accepted(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis' positive_data_acceptance, except for the refusals of `_refused_for_state`."""
    if response.status_code == 400 and _refused_for_state(case, json.loads(response.text)["error"]):
        return None
    return positive_data_acceptance(ctx, response, case)


@schema.parametrize()
@settings(_SETTINGS, max_examples=_EXAMPLES)
def test_api_conforms_to_its_document(case: Any, live: LiveGateway) -> None:
    case.call_and_validate(base_url=live.url, timeout=10)


OWNER = {"Authorization": "Bearer sk-workflow"}


def test_api_workflows_conform_to_its_document(live: LiveGateway) -> None:
    """Chains of calls along the document's links, so stored objects are read, paged and deleted for real."""
    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: Any) -> None:
            # One bearer token for the whole chain: without gateway keys it is what owns the stored objects
            # (a token generated for the document's optional bearer scheme would make another owner).
            case.headers = {**(case.headers or {}), **OWNER}

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            # Also for the requests checks make on their own (ST302 reads a created object back).
            return {"base_url": live.url, "timeout": 10, "headers": OWNER}

    Workflow.run(settings=settings(_SETTINGS, max_examples=15, stateful_step_count=6))
