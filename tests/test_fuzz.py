"""A few hundred fuzzed upstream streams through a real `gateway serve` (tests/fuzz.py; `make fuzz` runs more)."""
from __future__ import annotations

import os

from .fuzz import run_fuzz

SEED = os.environ.get("FUZZ_SEED", "20261130")


async def test_fuzzed_upstream_streams_end_well_and_leave_a_clean_log():
    summary = await run_fuzz(int(os.environ.get("FUZZ_STREAMS", "300")), SEED)
    report = "\n".join(summary.lines(SEED))
    assert not summary.failures and not summary.log_problems, report
    assert summary.kinds["stream"] > 100, report  # most streams reach the client as streams
