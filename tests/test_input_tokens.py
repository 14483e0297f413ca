"""POST /v1/responses/input_tokens through the openai SDK (`client.responses.input_tokens.count`), over
upstreams with vLLM's and llama.cpp's tokenizer endpoints, and over one with neither (estimate, completion)."""
from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from aiohttp import web

from .conftest import gateway_config
from .helpers import sdk
from .scripted_upstream import Reply, text_reply

_TOOLS = [{"type": "function", "name": "get_weather", "description": "weather", "parameters": {"type": "object"}}]


class TokenizerUpstream:
    """A chat completions server with vLLM's `/tokenize` (messages in, `count` out) or llama.cpp's
    `/apply-template` + `/tokenize` (prompt in, tokens out): one token a word, the template's markers included."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.asked: list[tuple[str, dict[str, Any]]] = []
        self.app = web.Application()
        self.app.router.add_post("/tokenize", self._tokenize)
        self.app.router.add_post("/apply-template", self._apply_template)
        self.app.router.add_post("/v1/chat/completions", self._chat)

    @staticmethod
    def template(messages: list[dict[str, Any]]) -> str:
        return "".join(f"<|{m['role']}|> {m['content']} <|end|> " for m in messages) + "<|assistant|>"

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.asked.append(("/tokenize", body))
        if self.kind == "vllm" and "messages" in body:
            return web.json_response({"count": len(self.template(body["messages"]).split()), "tokens": [],
                                      "max_model_len": 4096})
        if self.kind == "llama.cpp" and isinstance(body.get("content"), str):
            return web.json_response({"tokens": list(range(len(body["content"].split()) + 1))})  # +1: BOS
        return web.json_response({"error": {"message": "bad request"}}, status=400)

    async def _apply_template(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.asked.append(("/apply-template", body))
        if self.kind != "llama.cpp":
            return web.Response(status=404)
        return web.json_response({"prompt": self.template(body["messages"])})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        reply = text_reply("ok")
        response = web.StreamResponse(headers=reply.headers)
        await response.prepare(request)
        for step in reply.steps:
            if isinstance(step, bytes):
                await response.write(step)
        await response.write_eof()
        self.asked.append(("/v1/chat/completions", body))
        return response


@pytest.fixture(params=["vllm", "llama.cpp"])
async def tokenizer(request: Any, aiohttp_server: Any, start_gateway: Any) -> Any:
    fake = TokenizerUpstream(request.param)
    server = await aiohttp_server(fake.app, host="127.0.0.1")
    gateway = await start_gateway(gateway_config(str(server.make_url("/v1"))))
    return fake, sdk(str(gateway.make_url("")).rstrip("/"))


async def test_exact_counts_from_the_upstreams_tokenizer(tokenizer):
    fake, client = tokenizer
    counted = await client.responses.input_tokens.count(model="scripted", instructions="Be brief.",
                                                        input="what is the weather", tools=_TOOLS)
    assert counted.object == "response.input_tokens"
    words = len(TokenizerUpstream.template([{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": "what is the weather"}]).split())
    assert counted.input_tokens == words + (1 if fake.kind == "llama.cpp" else 0)
    asked = dict(fake.asked)
    if fake.kind == "vllm":
        assert asked["/tokenize"]["tools"][0]["function"]["name"] == "get_weather"
        assert asked["/tokenize"]["add_generation_prompt"] is True
    else:
        assert asked["/apply-template"]["tools"][0]["function"]["name"] == "get_weather"
        assert asked["/tokenize"]["add_special"] is True


async def test_the_count_includes_a_stored_chain(tokenizer):
    """`previous_response_id`: the earlier turns are counted as create would send them."""
    fake, client = tokenizer
    first = await client.responses.create(model="scripted", input="one two three")
    alone = await client.responses.input_tokens.count(model="scripted", input="four")
    chained = await client.responses.input_tokens.count(model="scripted", input="four",
                                                        previous_response_id=first.id)
    # The chain adds the first user turn (<|user|> one two three <|end|>) and the answer (<|assistant|> ok <|end|>).
    assert chained.input_tokens - alone.input_tokens == 5 + 3
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.input_tokens.count(model="scripted", input="x", previous_response_id="resp_nope")
    assert caught.value.code == "previous_response_not_found"


async def test_without_a_tokenizer_an_estimate_that_says_so(upstream, gateway, http):
    async with http.post(gateway.make_url("/v1/responses/input_tokens"),
                         json={"model": "scripted", "input": "x" * 400}) as response:
        counted = await response.json()
    assert response.status == 200 and response.headers["X-Input-Tokens-Source"] == "estimate"
    assert counted["object"] == "response.input_tokens" and 100 <= counted["input_tokens"] <= 130
    assert not upstream.requests  # no completion was run for it


async def test_a_one_token_completion_when_the_operator_chooses_it(upstream, make_gateway):
    gateway = await make_gateway(upstream={"input_tokens": "completion"})
    upstream.enqueue(Reply([json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "a"},
                                                     "finish_reason": "length"}],
                                        "usage": {"prompt_tokens": 321, "completion_tokens": 1}}).encode()],
                           headers={"Content-Type": "application/json"}))
    client = sdk(str(gateway.make_url("")).rstrip("/"))
    counted = await client.responses.input_tokens.count(model="scripted", input="hello")
    assert counted.input_tokens == 321
    sent = upstream.requests[-1].body
    assert sent["max_tokens"] == 1 and sent["stream"] is False and "stream_options" not in sent


async def test_bad_requests_are_400s_in_the_envelope(upstream, gateway, http):
    async with http.post(gateway.make_url("/v1/responses/input_tokens"),
                         json={"model": "scripted", "input": [{"type": "message", "role": "wizard"}]}) as response:
        error = (await response.json())["error"]
    assert response.status == 400 and error["param"] == "input[0].role"
    async with http.post(gateway.make_url("/v1/responses/input_tokens"), json={"input": "hi"}) as response:
        error = (await response.json())["error"]
    assert response.status == 400 and error["param"] == "model"
