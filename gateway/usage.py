"""Token usage: the upstream's Chat Completions usage as a Responses `usage` object (sans-I/O)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .bounds import MAX_COUNT, clip


def _int(value: Any, name: str = "", warnings: list[str] | None = None) -> int:
    """A token count: a non-negative int a JSON client can hold; anything else counts 0 (with a warning)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT:
        return value
    if warnings is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        warnings.append(f"usage.{name} {clip(str(value), 40)} is out of range; counted as 0")
    return 0


def map_usage(usage: Mapping[str, Any] | None, warnings: list[str] | None = None) -> dict[str, Any]:
    """Chat usage (OpenAI, DeepSeek, Groq shapes) → Responses usage; total is always the sum."""
    usage = usage if isinstance(usage, Mapping) else {}
    prompt = _int(usage.get("prompt_tokens", usage.get("input_tokens")), "prompt_tokens", warnings)
    completion = _int(usage.get("completion_tokens", usage.get("output_tokens")), "completion_tokens", warnings)
    prompt_details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}
    cached = (_int(prompt_details.get("cached_tokens"), "cached_tokens", warnings)
              if isinstance(prompt_details, Mapping) else 0)
    cached = cached or _int(usage.get("prompt_cache_hit_tokens"), "prompt_cache_hit_tokens", warnings)
    reasoning = (_int(completion_details.get("reasoning_tokens"), "reasoning_tokens", warnings)
                 if isinstance(completion_details, Mapping) else 0)
    reasoning = reasoning or _int(usage.get("reasoning_tokens"), "reasoning_tokens", warnings)
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion}


def add_usage(earlier: Mapping[str, Any], usage: Mapping[str, Any]) -> dict[str, Any]:
    """Two Responses usages summed (the samples of one response that ran tools in between)."""
    total = {key: earlier[key] + usage[key] for key in ("input_tokens", "output_tokens", "total_tokens")}
    total["input_tokens_details"] = {key: earlier["input_tokens_details"][key] + value
                                     for key, value in usage["input_tokens_details"].items()}
    total["output_tokens_details"] = {"reasoning_tokens": earlier["output_tokens_details"]["reasoning_tokens"]
                                      + usage["output_tokens_details"]["reasoning_tokens"]}
    return total
