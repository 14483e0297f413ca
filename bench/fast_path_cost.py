"""The gateway's own CPU per streamed token, in process: decode, process and encode a bench stream.

    python -m bench.fast_path_cost [--tokens 1000] [--repeat 200]

For the bench upstream's text and tool-call streams (bench/upstream.py), the reads go through
`ChunkDecoder`, `ResponseStream` and `encode_events` as `pipeline._stream` drives them (one read's
events joined with `sse.joined`), with the fast path on and off, in two cuttings: `bulk`, reads of
64 kB (a fast upstream: runs of many events per read), and `paced`, one event per read. Prints
microseconds per token (the median of 3 timings of `--repeat` streams each).
"""
from __future__ import annotations

import argparse
import statistics
import time

from gateway.sse import ChunkDecoder, encode_events, joined
from gateway.stream_processor import ResponseStream, StreamOptions

from .upstream import events

READ = 64 * 1024


def cut(kind: str, tokens: int, bulk: bool) -> list[bytes]:
    opening, deltas, closing = events(f"bench-{kind}-{tokens}")
    if not bulk:
        return [opening, *deltas, closing]
    reads, current, size = [], [opening], len(opening)
    for delta in deltas:
        current.append(delta)
        size += len(delta)
        if size >= READ:
            reads.append(b"".join(current))
            current, size = [], 0
    reads.append(b"".join([*current, closing]))
    return reads


def stream(reads: list[bytes], fast: bool) -> list[bytes]:
    processor = ResponseStream(StreamOptions(model="m"), response_id="resp_1", clock=lambda: 1,
                               new_id=lambda kind: kind + "_1")
    decoder = ChunkDecoder(fast_path=fast)
    out = [encode_events(processor.start())]
    for data in reads:
        chunks = decoder.feed(data)
        batch = processor.feed(chunks[0]) if len(chunks) == 1 else joined([processor.feed(c) for c in chunks])
        out.append(encode_events(batch))
    out.append(encode_events(processor.finish(decoder.done)))
    return out


def per_token(reads: list[bytes], fast: bool, tokens: int, repeat: int) -> float:
    stream(reads, fast)
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeat):
            stream(reads, fast)
        timings.append((time.perf_counter() - started) / repeat / tokens * 1e6)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    for kind in ("text", "tool"):
        for bulk in (True, False):
            reads = cut(kind, args.tokens, bulk)
            assert b"".join(stream(reads, True)) == b"".join(stream(reads, False))
            figures = [f"{path} {per_token(reads, path == 'fast', args.tokens, args.repeat):.3f}"
                       for path in ("fast", "full")]
            print(f"{kind} {'bulk' if bulk else 'paced'}: " + ", ".join(figures) + " µs/token")


if __name__ == "__main__":
    main()
