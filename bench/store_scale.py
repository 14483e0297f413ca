"""`GET /v1/responses/{id}` with a million stored responses in the PostgreSQL table.

    .venv/bin/python -m bench.store_scale [--rows 1000000] [--gets 5000] [--concurrency 16]

Fills a schema of its own (BENCH_POSTGRES_URL, default the local server's `test` database) with `rows`
responses written server-side (generate_series: about a minute for a million), starts `gateway serve` on
it, and reads random ids through HTTP: p50/p99 latency. The schema is dropped at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time

import aiohttp
import asyncpg

from gateway.store.postgres import migrate, split_schema
from gateway.store.service import token_owner

from .common import LOOPBACK, free_port, percentile

URL = (f"{os.environ.get('BENCH_POSTGRES_URL', f'postgresql://postgres@{LOOPBACK}:5432/test')}"
       f"?schema=bench_scale_{os.urandom(4).hex()}")
TOKEN = "sk-bench"
# A stored response as the gateway writes it (service.py), about 600 bytes of JSON.
_FILL = """
INSERT INTO responses (id, record, expires_at)
SELECT 'resp_bench' || i, convert_to(json_build_object(
    'owner', $1::text, 'input', json_build_array(json_build_object('type', 'message', 'role', 'user',
        'id', 'msg_bench' || i, 'status', 'completed',
        'content', json_build_array(json_build_object('type', 'input_text', 'text', 'question ' || i)))),
    'chain', json_build_array(), 'resumable', false,
    'response', json_build_object('id', 'resp_bench' || i, 'object', 'response', 'created_at', 1700000000,
        'status', 'completed', 'model', 'bench', 'output', json_build_array(json_build_object(
            'type', 'message', 'id', 'msg_out' || i, 'role', 'assistant', 'status', 'completed',
            'content', json_build_array(json_build_object('type', 'output_text', 'text', 'answer ' || i,
                                                          'annotations', json_build_array())))),
        'parallel_tool_calls', true, 'tool_choice', 'auto', 'tools', json_build_array(),
        'error', null, 'incomplete_details', null, 'instructions', null, 'metadata', json_build_object(),
        'temperature', 1, 'top_p', 1, 'usage', null))::text, 'UTF8'), now() + interval '30 days'
FROM generate_series($2::int, $3::int) AS i
"""


async def fill(rows: int) -> None:
    dsn, schema = split_schema(URL)
    await migrate(dsn, schema)
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        started = time.monotonic()
        for start in range(1, rows + 1, 100_000):
            await conn.execute(_FILL, token_owner(f"Bearer {TOKEN}"), start, min(start + 99_999, rows))
        await conn.execute("ANALYZE responses")
        size = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('responses'))")
        print(f"filled {rows:,} responses in {time.monotonic() - started:.0f} s; table with indexes {size}")
    finally:
        await conn.close()


async def drop() -> None:
    dsn, schema = split_schema(URL)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def measure(rows: int, gets: int, concurrency: int) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--host", LOOPBACK, "--port", str(port), "--store", URL,
        "--log-level", "warning", stdout=asyncio.subprocess.DEVNULL)
    base = f"http://{LOOPBACK}:{port}/v1/responses/"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with aiohttp.ClientSession(headers=headers) as session:
            for _ in range(200):
                try:
                    async with session.get(f"http://{LOOPBACK}:{port}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            ids = [f"resp_bench{random.randint(1, rows)}" for _ in range(gets)]
            latencies: list[float] = []
            errors = 0

            async def worker(mine: list[str]) -> None:
                nonlocal errors
                for rid in mine:
                    started = time.perf_counter()
                    async with session.get(base + rid) as response:
                        await response.read()
                        errors += response.status != 200
                    latencies.append((time.perf_counter() - started) * 1000)

            await asyncio.gather(*(worker(ids[i::concurrency]) for i in range(concurrency)))
        latencies.sort()
        print(f"GET /v1/responses/{{id}}, {rows:,} rows, {gets:,} random gets, {concurrency} at a time: "
              f"p50 {percentile(latencies, 50):.2f} ms, p99 {percentile(latencies, 99):.2f} ms, errors {errors}")
    finally:
        proc.terminate()
        await proc.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--gets", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    try:
        await fill(args.rows)
        await measure(args.rows, args.gets, args.concurrency)
    finally:
        await drop()


if __name__ == "__main__":
    asyncio.run(main())
