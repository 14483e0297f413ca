"""SIGHUP against a real `python -m gateway serve`: running streams finish, new requests take the new routes."""
from __future__ import annotations

import asyncio
import hashlib
import signal

import yaml

from .conftest import assert_valid_stream, gateway_process
from .scripted_upstream import Reply, chunk, sse

KEY = "sk-gw-after-reload-42"


def write_config(path, upstreams: list[dict], **sections) -> None:
    path.write_text(yaml.safe_dump({"server": {"shutdown_grace": 1}, "upstreams": upstreams, **sections}))


async def wait_for_line(gw, text: str, count: int = 1, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while gw.output.count(text) < count:
        assert asyncio.get_running_loop().time() < deadline, f"no {text!r} in: {gw.output}"
        await asyncio.sleep(0.05)


async def test_sighup_switches_routes_and_keys_while_a_stream_finishes(three_upstreams, http, tmp_path):
    old, new, _ = three_upstreams
    config = tmp_path / "gateway.yaml"
    write_config(config, [{"name": "old", "base_url": old.url, "models": ["m"]},
                          {"name": "new", "base_url": new.url}])
    old.enqueue(Reply([sse(chunk({"role": "assistant", "content": "slow "}), done=False), 1.0,
                       sse(chunk({"content": "answer"}), chunk({}, finish="stop"))]))
    async with gateway_process("--config", str(config)) as gw:
        async def stream() -> bytes:
            async with http.post(f"{gw.url}/v1/responses", json={"model": "m", "input": "hi", "stream": True}) as r:
                return await r.read()
        running = asyncio.ensure_future(stream())
        while not old.requests:
            await asyncio.sleep(0.01)
        write_config(config, [{"name": "old", "base_url": old.url},
                              {"name": "new", "base_url": new.url, "models": ["m"]}],
                     auth={"keys": [{"name": "ops", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]})
        gw.proc.send_signal(signal.SIGHUP)
        await wait_for_line(gw, '"config.reloaded"')
        assert not running.done()  # the reload did not wait for it, nor end it
        async with http.post(f"{gw.url}/v1/responses", json={"model": "m", "input": "hi"}) as response:
            assert response.status == 401  # the new keys apply
        async with http.post(f"{gw.url}/v1/responses", json={"model": "m", "input": "hi"},
                             headers={"Authorization": f"Bearer {KEY}"}) as response:
            assert response.status == 200 and (await response.json())["output"][0]["content"][0]["text"] == "Hello"
        assert len(new.requests) == 1 and len(old.requests) == 1
        result = assert_valid_stream(await running)
        assert result["status"] == "completed" and result["text"] == "slow answer"

        config.write_text("upstreams:\n  - name: broken\n")  # no base_url
        gw.proc.send_signal(signal.SIGHUP)
        await wait_for_line(gw, '"config.reload_refused"')
        async with http.post(f"{gw.url}/v1/responses", json={"model": "m", "input": "hi"},
                             headers={"Authorization": f"Bearer {KEY}"}) as response:
            assert response.status == 200  # the old configuration stays in force
        assert len(new.requests) == 2
    refused = [line for line in gw.output.splitlines() if "config.reload_refused" in line]
    assert len(refused) == 1 and "upstreams[0].base_url" in refused[0]
    assert gw.returncode == 0
