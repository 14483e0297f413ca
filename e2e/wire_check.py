#!/usr/bin/env python3
"""POST one streaming request to a Responses endpoint and judge its raw SSE with gateway.check.

  python e2e/wire_check.py URL --body JSON [--save FILE] [--expect-text T] [--expect-reasoning T]
                           [--expect-tool NAME=ARGS]... [--expect-status S] [--timeout S]

URL is the endpoint itself (…/v1/responses); `stream: true` is added to the body; the bearer token
comes from $OPENAI_API_KEY. Prints violations, unmet expectations and one summary line; exit 1 on any.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

from gateway.check import check_bytes


def post(url: str, body: dict, timeout: float) -> tuple[int, str, bytes]:
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
               "Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', 'unused')}"}
    request = urllib.request.Request(url, json.dumps({**body, "stream": True}).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def unmet(result: dict, args: argparse.Namespace) -> list[str]:
    wants = [("text", args.expect_text), ("reasoning", args.expect_reasoning), ("status", args.expect_status)]
    problems = [f"expected {key} {want!r}, got {result[key]!r}" for key, want in wants
                if want is not None and result[key] != want]
    if args.expect_tool:
        got = [f"{call['name']}={call['arguments']}" for call in result["tool_calls"]]
        if got != args.expect_tool:
            problems.append(f"expected tool calls {args.expect_tool}, got {got}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--body", required=True)
    parser.add_argument("--save")
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--expect-text")
    parser.add_argument("--expect-reasoning")
    parser.add_argument("--expect-status")
    parser.add_argument("--expect-tool", action="append", default=[], metavar="NAME=ARGS")
    args = parser.parse_args(argv)
    status, content_type, raw = post(args.url, json.loads(args.body), args.timeout)
    if args.save:
        with open(args.save, "wb") as file:
            file.write(raw)
    if status != 200 or not content_type.startswith("text/event-stream"):
        print(f"FAIL HTTP {status} {content_type}: {raw[:300]!r}")
        return 1
    violations, warnings, result = check_bytes(raw)
    problems = violations + unmet(result, args)
    for line in problems:
        print(f"FAIL {line}")
    for line in warnings:
        print(f"warn {line}")
    print(f"{'INVALID' if problems else 'OK'}: {len(violations)} violations, {len(warnings)} warnings; "
          f"status={result['status']} events={result['events']} text={result['text'][:60]!r} "
          f"tool_calls={len(result['tool_calls'])}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
