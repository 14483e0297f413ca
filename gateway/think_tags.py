"""Inline `<think>…</think>` reasoning inside `content`, split out incrementally (sans-I/O).

Servers without a reasoning parser (quirk 20) stream the model's thinking as ordinary content
wrapped in `<think>` tags, and network chunking cuts the tags anywhere. `ThinkSplitter.feed`
takes each content fragment and returns `(is_reasoning, text)` segments; a fragment that may be
the start of a tag is held back until the next one decides it. No tag ever reaches the text.

Modes (config `upstream.think_tags`):
- ``auto``: only a `<think>` at the very start of the content (after whitespace) opens reasoning;
  once the start is decided (or the block has closed) the splitter reports `done` and the caller
  drops it, so ordinary answers cost nothing per chunk.
- ``on``: `<think>` anywhere opens reasoning and `</think>` closes it, any number of times. While
  `idle` is true, a fragment without ``<`` is plain text and need not be fed at all.

Whitespace around the tags is layout, not content: it is dropped at the start of a reasoning
block, at its end and at the start of the text that follows.
"""
from __future__ import annotations

from typing import Literal

ThinkTagsMode = Literal["auto", "on", "off"]
OPEN = "<think>"
CLOSE = "</think>"

Segment = tuple[bool, str]


class ThinkSplitter:
    __slots__ = ("inside", "idle", "done", "_auto", "_tags", "_pending", "_undecided", "_strip", "_ws")

    def __init__(self, mode: str) -> None:
        if mode not in ("auto", "on"):
            raise ValueError(f"think tag mode must be auto or on, not {mode!r}")
        self.inside = False           # within <think>…</think>
        self.idle = False             # nothing held: a fragment without '<' is plain text
        self.done = False             # auto mode: nothing left to split, the caller may drop us
        self._auto = mode == "auto"
        self._tags = True             # tags are still recognised
        self._pending = ""            # a possible partial tag (or, undecided, the leading content)
        self._undecided = self._auto  # auto: the start of the content has not been seen yet
        self._strip = True            # drop whitespace at the start of the next segment
        self._ws = ""                 # trailing whitespace held inside reasoning

    def feed(self, text: str) -> list[Segment]:
        out: list[Segment] = []
        if self._undecided:
            buffered = self._pending + text
            head = buffered.lstrip()
            if len(head) < len(OPEN) and OPEN.startswith(head):
                self._pending = buffered          # "", "<", "<th", … : wait for more
                return out
            self._undecided = False
            self._pending = ""
            if not head.startswith(OPEN):
                self.done = True                  # an ordinary answer: pass it through untouched
                out.append((False, buffered))
                return out
            self.inside = True
            text = head[len(OPEN):]
        self._split(text, out)
        self._settle()
        return out

    def flush(self) -> list[Segment]:
        """The content ended: release whatever was held (a partial tag is just text)."""
        out: list[Segment] = []
        held, self._pending = self._pending, ""
        if self._undecided:
            self._undecided = False
            if held.strip():
                out.append((False, held))
        elif held:
            self._emit(held, out)
        self._ws = ""
        self.done = True
        self.idle = False
        return out

    # ------------------------------------------------------------------ internals
    def _split(self, text: str, out: list[Segment]) -> None:
        s = self._pending + text if self._pending else text
        self._pending = ""
        while s:
            if not self._tags:
                self._emit(s, out)
                return
            tag = CLOSE if self.inside else OPEN
            i = s.find(tag)
            if i < 0:
                j = s.rfind("<", max(0, len(s) - len(tag) + 1))
                if j >= 0 and tag.startswith(s[j:]):
                    self._pending = s[j:]
                    s = s[:j]
                self._emit(s, out)
                return
            if i:
                self._emit(s[:i], out)
            s = s[i + len(tag):]
            if self.inside:
                self.inside = False
                self._ws = ""
                if self._auto:
                    self._tags = False    # auto: only the leading block is reasoning
            else:
                self.inside = True
            self._strip = True

    def _emit(self, piece: str, out: list[Segment]) -> None:
        if self._strip:
            piece = piece.lstrip()
            if not piece:
                return
            self._strip = False
        if self.inside:
            if self._ws:
                piece = self._ws + piece
            body = piece.rstrip()
            self._ws = piece[len(body):]
            if body:
                out.append((True, body))
        elif piece:
            out.append((False, piece))

    def _settle(self) -> None:
        quiet = not (self.inside or self._pending or self._strip)
        self.idle = quiet and self._tags
        if quiet and not self._tags:
            self.done = True
