"""The Open Responses compliance suite, whole, against a real gateway over the cooperative model.

The suite (a copy of the public openresponses CLI) lies in the read-only shared folder beside the
checkout, ../shared/conformance (or $GATEWAY_SHARED_DIR/conformance), and runs on bun, which its
script installs from npm once. Without either the test skips, saying why (with CI=true it fails).
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT
from .cooperative_upstream import CooperativeModel

SHARED = Path(os.environ.get("GATEWAY_SHARED_DIR", ROOT.parent / "shared"))
SCRIPT = SHARED / "conformance" / "run-openresponses.sh"
HTTP_TESTS = ("basic-response", "assistant-phase", "response-output-phase-schema", "streaming-response",
              "system-prompt", "tool-calling", "image-input", "multi-turn")
SUITE_SIZE = 17  # the copy's tests: the HTTP ones, 2 of /responses/compact, 7 over WebSocket


def _skip(reason: str) -> None:
    """Skip visibly; in CI (CI=true) the suite must run, so not finding it is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true requires the compliance suite to run")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def suite() -> Path:
    """The suite's script, with bun installed (its script installs it from npm when missing)."""
    if not SCRIPT.exists():
        _skip(f"no compliance suite at {SCRIPT} (the shared folder is not beside this checkout)")
    try:  # --help makes the script install bun and zod, then print the usage and exit
        done = subprocess.run(["bash", str(SCRIPT), "http://127.0.0.1:9/v1", "--help"], capture_output=True,
                              text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _skip(f"cannot install the suite's runtime (bun from npm): {exc}")
    if done.returncode != 0:
        _skip(f"cannot install the suite's runtime (bun from npm): {done.stderr.strip()[-400:]}")
    return SCRIPT


async def run_suite(script: Path, base_url: str) -> dict[str, Any]:
    """Run the whole suite against `base_url` (the gateway keeps serving meanwhile); its JSON report."""
    proc = await asyncio.create_subprocess_exec(
        "bash", str(script), base_url, "--json",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 300)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = out.decode()
    assert "{" in text, f"the suite printed no report (exit {proc.returncode}): {err.decode()[-2000:]}"
    return json.loads(text[text.index("{"):])


async def test_compliance_suite_passes_whole(suite, make_gateway, upstream):
    """All of it: HTTP, streaming, tools, images, multi-turn, /responses/compact and the WebSocket tests."""
    upstream.responder = CooperativeModel()
    gateway = await make_gateway()
    report = await run_suite(suite, str(gateway.make_url("/v1")))
    results = {result["id"]: result for result in report["results"]}
    failed = {test: result.get("errors") for test, result in results.items() if result["status"] != "passed"}
    assert not failed, json.dumps(failed, indent=1)[:6000]
    assert len(results) == SUITE_SIZE and set(HTTP_TESTS) <= set(results)
