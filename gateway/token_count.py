"""How many tokens a chat request's prompt takes on an upstream (POST /v1/responses/input_tokens,
`context_management` compaction thresholds). Counted, in order:
1. exactly, where the upstream says: vLLM's `POST /tokenize` with chat messages (`count`), else
   llama.cpp's `POST /apply-template` (its chat template over the messages) then `POST /tokenize` of
   that prompt with its special tokens (both at the server's root, beside `/v1`);
2. else as the upstream's `input_tokens` option chooses: `estimate` (default; about 4 characters of
   the translated request's JSON a token) or `completion` (a one-token completion whose
   `usage.prompt_tokens` tells, which costs the upstream a prompt evaluation).
"""
from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from .errors import UpstreamError
from .request_context import current_request_id
from .upstream import UpstreamClient, http_error

_CHARS_PER_TOKEN = 4
_ASK_TIMEOUT = 30.0  # a tokenizer answers in milliseconds; a prompt evaluation may take longer


async def count_tokens(client: UpstreamClient, chat: dict[str, Any],
                       authorization: str | None) -> tuple[int, str]:
    """The prompt tokens of the chat request `chat` on `client`'s upstream, and how they were counted."""
    asker = _Asker(client, authorization)
    count = await _vllm(asker, chat)
    if count is not None:
        return count, "vllm"
    count = await _llama_cpp(asker, chat)
    if count is not None:
        return count, "llama.cpp"
    if client.config.input_tokens == "completion":
        return await _one_token_completion(asker, chat), "completion"
    return estimate(chat), "estimate"


def estimate(chat: dict[str, Any]) -> int:
    """A rough count: about four characters of the messages' and tools' JSON a token."""
    size = len(orjson.dumps(chat["messages"])) + len(orjson.dumps(chat.get("tools") or []))
    return max(1, -(-size // _CHARS_PER_TOKEN))


class _Asker:
    """POSTs JSON to the upstream's server root (its base URL without `/v1`) or its API."""

    def __init__(self, client: UpstreamClient, authorization: str | None) -> None:
        self.client = client
        self.headers = client.headers(current_request_id.get(), authorization)
        self.headers["Accept"] = "application/json"
        base = client.base_url
        self.root = base[:-3] if base.endswith("/v1") else base

    async def ask(self, url: str, document: dict[str, Any]) -> Any:
        """The JSON answer, or None when the server has no such endpoint or does not take the request."""
        try:
            async with self.client.session.post(url, data=orjson.dumps(document), headers=self.headers,
                                                timeout=aiohttp.ClientTimeout(total=_ASK_TIMEOUT)) as answer:
                if answer.status >= 400:
                    return None
                return orjson.loads(await answer.read())
        except (aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError):
            return None


async def _vllm(asker: _Asker, chat: dict[str, Any]) -> int | None:
    request = {"model": chat["model"], "messages": chat["messages"], "add_generation_prompt": True}
    if chat.get("tools"):
        request["tools"] = chat["tools"]
    answer = await asker.ask(f"{asker.root}/tokenize", request)
    count = answer.get("count") if isinstance(answer, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) else None


async def _llama_cpp(asker: _Asker, chat: dict[str, Any]) -> int | None:
    request = {"messages": chat["messages"]}
    if chat.get("tools"):
        request["tools"] = chat["tools"]
    templated = await asker.ask(f"{asker.root}/apply-template", request)
    prompt = templated.get("prompt") if isinstance(templated, dict) else None
    if not isinstance(prompt, str):
        return None
    # As llama-server tokenizes a chat prompt: special tokens added and the template's own parsed.
    answer = await asker.ask(f"{asker.root}/tokenize", {"content": prompt, "add_special": True,
                                                       "parse_special": True})
    tokens = answer.get("tokens") if isinstance(answer, dict) else None
    return len(tokens) if isinstance(tokens, list) else None


async def _one_token_completion(asker: _Asker, chat: dict[str, Any]) -> int:
    request = {key: value for key, value in chat.items() if key not in ("stream", "stream_options")}
    request.update({"stream": False, asker.client.config.max_tokens_param: 1})
    try:
        async with asker.client.session.post(f"{asker.client.base_url}/chat/completions", data=orjson.dumps(request),
                                             headers=asker.headers) as answer:
            if answer.status >= 400:
                raise await http_error(answer, asker.client.config.idle_timeout)
            document = orjson.loads(await answer.read())
    except (aiohttp.ClientError, OSError) as exc:
        raise asker.client.unreachable(exc, current_request_id.get()) from None
    except orjson.JSONDecodeError:
        raise UpstreamError("The upstream answered the counting completion with something other than JSON.") from None
    usage = document.get("usage") if isinstance(document, dict) else None
    count = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if not isinstance(count, int) or isinstance(count, bool):
        raise UpstreamError("The upstream's completion carried no usage.prompt_tokens to count the input with.")
    return count
