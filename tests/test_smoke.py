from .conftest import assert_valid_stream
from .helpers import post_stream
from .scripted_upstream import text_reply, tool_reply


async def test_text_stream(upstream, gateway, http):
    upstream.enqueue(text_reply("Hel", "lo"))
    response, raw = await post_stream(http, gateway, {})
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    result = assert_valid_stream(raw)
    assert result["text"] == "Hello"
    assert result["status"] == "completed"
    assert result["usage"]["total_tokens"] == 12


async def test_tool_stream(upstream, gateway, http):
    upstream.enqueue(tool_reply("get_weather", '{"city": "Paris"}'))
    response, raw = await post_stream(http, gateway, {"tools": [{"type": "function", "name": "get_weather"}]})
    result = assert_valid_stream(raw)
    assert result["tool_calls"] == [{"name": "get_weather", "arguments": '{"city": "Paris"}',
                                     "call_id": "call_abc123"}]
