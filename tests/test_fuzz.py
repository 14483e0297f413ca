"""A few hundred fuzzed upstream streams through a real `gateway serve` with the shipped config.yaml
(tests/fuzz.py; `make fuzz` runs more). Every stream must reach the upstream."""
from __future__ import annotations

import os

from .conftest import free_port
from .fuzz import run_fuzz

SEED = os.environ.get("FUZZ_SEED", "20261130")


async def test_fuzzed_upstream_streams_end_well_and_leave_a_clean_log():
    summary = await run_fuzz(int(os.environ.get("FUZZ_STREAMS", "300")), SEED)
    report = "\n".join(summary.lines(SEED))
    assert summary.passed, report  # no failure, a clean log, every stream reached the upstream
    assert summary.kinds["stream"] > 100, report  # most streams reach the client as streams


async def test_streams_that_never_reach_the_upstream_are_counted():
    """The count the fuzz fails on: a gateway sent to a port where nothing listens reaches the upstream never."""
    summary = await run_fuzz(24, SEED, upstream_url=f"http://127.0.0.1:{free_port()}/v1")
    assert len(summary.unreached) == 24 and not summary.passed
    assert {o.code for o in summary.unreached} <= {"upstream_unavailable"}, summary.lines(SEED)
    assert "24 never reached the upstream (tolerance 0)" in summary.lines(SEED)[0]
