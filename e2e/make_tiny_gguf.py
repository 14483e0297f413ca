#!/usr/bin/env python3
"""Write a tiny random-weight GGUF model that llama.cpp's llama-server can serve (e2e upstream).

  python e2e/make_tiny_gguf.py OUT.gguf [--seed N]        (needs the `gguf` and `numpy` packages)

Only the wire format is under test, so the model is as small as llama.cpp accepts and its text is
nonsense, but readable nonsense: the output layer prefers whole words, avoids bytes that would be
half a UTF-8 character, and ends an answer with a small chance per token.

- Architecture `llama`: 2 blocks, width 64, 4 heads, feed-forward 128, F32, trained context 2048
  (e2e/llama.sh raises it with --override-kv), RoPE base 1e6.
- Tokenizer: byte-level BPE (`gpt2` model, `qwen2` pre-tokenizer) made here: the 256 byte tokens,
  merges that build a list of common words and JSON pieces, and ChatML's special tokens plus the
  Hermes tool-call tags, so that `--jinja` recognises the template's tool-call format.
- Chat template: Qwen2.5-Instruct's (ChatML with `<tools>` in the system message and
  `<tool_call>{"name": …, "arguments": …}</tool_call>` answers), the format llama-server parses tool
  calls from.
- Tool calls: llama.cpp's grammar for `tool_choice: "required"` allows text before the mandatory
  `<tool_call>\n`, so the model itself must choose to open one. Two hand-set attention heads and a
  few output-layer rules (see weights()) make the answer to a prompt that lists tools one short
  call: `<tool_call>`, a newline, JSON whose free parts close soon, `</tool_call>`, end of turn; the
  grammar spells the name and the arguments. Without tools the model answers in text.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gguf
import numpy as np

BLOCKS, WIDTH, HEADS, FFN, CONTEXT = 2, 64, 4, 128, 2048

# Qwen2.5-Instruct's chat template (the model family's published tokenizer_config.json), which
# llama.cpp's chat-format detection knows as Hermes-style tool calling.
TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

VOCABULARY = """the a an and or but so of to in on at by for with from as is are was be been it this that
these those there here I you we they he she me my your our their what which who when where why how
yes no not ok sure please thanks hello hi good fine great small large new old first last next
can could will would should may might do does did done make made get got give take see look know
think say said tell ask answer question reply request response result value name text data word
stream token model server client gateway upstream tool call function arguments weather city
Paris London Tokyo Berlin today tomorrow warm cold sunny rain wind degrees temperature celsius
one two three four five ten hundred time day week year now then soon again more less very much
Hello Yes No The It This We You OK Sure""".split()
JSON_PIECES = ['{"', '":', '": "', '",', '", "', '"}', '}}', '[]', 'true', 'false', 'null', ', ', '. ', '! ', '? ']
SPECIALS = [  # (text, type, logit prior)
    ("<|endoftext|>", gguf.TokenType.CONTROL, -40.0),
    ("<|im_start|>", gguf.TokenType.CONTROL, -40.0),
    ("<|im_end|>", gguf.TokenType.CONTROL, 0.0),          # end of turn: set by --eos-prior
    ("<tool_call>", gguf.TokenType.USER_DEFINED, -12.0),
    ("</tool_call>", gguf.TokenType.USER_DEFINED, -4.0),
    ("<tool_response>", gguf.TokenType.USER_DEFINED, -40.0),
    ("</tool_response>", gguf.TokenType.USER_DEFINED, -40.0),
    ("<tools>", gguf.TokenType.USER_DEFINED, -40.0),
    ("</tools>", gguf.TokenType.USER_DEFINED, -40.0),
]


def byte_alphabet() -> list[str]:
    """The printable stand-in of each byte in byte-level BPE (GPT-2's table), indexed by byte value."""
    kept = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, spare = {}, 0x100
    for value in range(256):
        if value in kept:
            table[value] = chr(value)
        else:
            table[value], spare = chr(spare), spare + 1
    return [table[value] for value in range(256)]


def byte_prior(value: int) -> float:
    """Logit prior of a single-byte token: letters and spaces fine, control and non-ASCII bytes never."""
    char = chr(value)
    if value >= 0x80 or (value < 0x20 and char != "\n"):
        return -40.0
    if char.isalpha() or char == " ":
        return 0.5
    return -0.5 if char in ".,!?\n" else -2.0


class Tokenizer:
    """Tokens, their types and priors, and the merges that spell each piece of VOCABULARY/JSON_PIECES."""

    def __init__(self) -> None:
        self.alphabet = byte_alphabet()
        self.tokens: list[str] = []
        self.types: list[int] = []
        self.priors: list[float] = []
        self.merges: list[str] = []
        self.ids: dict[str, int] = {}
        for value, char in enumerate(self.alphabet):
            self._add(char, gguf.TokenType.NORMAL, byte_prior(value))
        for word in VOCABULARY:
            self._spell(word, 3.0)
            self._spell(" " + word, 4.0)
        for piece in JSON_PIECES:
            self._spell(piece, 1.0)
        for text, kind, prior in SPECIALS:
            self._add(text, kind, prior)

    def _add(self, token: str, kind: int, prior: float) -> int:
        if token not in self.ids:
            self.ids[token] = len(self.tokens)
            self.tokens.append(token)
            self.types.append(int(kind))
            self.priors.append(prior)
        return self.ids[token]

    def _spell(self, piece: str, prior: float) -> str:
        """Merges joining the halves of `piece`, each half spelled first (so every merge's sides exist)."""
        symbols = "".join(self.alphabet[b] for b in piece.encode("utf-8"))
        return self._join(symbols, prior)

    def _join(self, symbols: str, prior: float) -> str:
        if len(symbols) == 1:
            return symbols
        middle = len(symbols) // 2
        left, right = self._join(symbols[:middle], 0.0), self._join(symbols[middle:], 0.0)
        if symbols not in self.ids:
            self.merges.append(f"{left} {right}")
            self._add(symbols, gguf.TokenType.NORMAL, prior)
        elif prior > self.priors[self.ids[symbols]]:
            self.priors[self.ids[symbols]] = prior  # a half that is also a whole word keeps the word's prior
        return symbols


# Residual channels that the random blocks neither read nor write (see weights()). The marks are 1
# in the embeddings of some tokens: <tools>, "\n", <tool_call>, tokens ending in "}", </tool_call>.
(CONSTANT, TOOLS_ANY, TOOLS_FLAG, TOOLS_MARK, NEWLINE_MARK, OPEN_MARK, BRACE_MARK, CLOSE_MARK) = range(8)
RESERVED = 8
# RoPE base: Qwen2.5's. The tools heads compare positions only through the slowest RoPE pair, which
# turns by 1e6 ** (-14/16) ~ 5.6e-6 rad per token: under 0.4 rad across a 65536-token context.
ROPE_BASE = 1e6
BOOST = 30.0  # logit a tool-call rule adds to the token it wants: far above the priors and the noise
# With tools, logits added to the tokens that end a JSON string, array or object, so that the free
# parts of a call's arguments stay short: a free string otherwise runs to the token cap.
CLOSERS = {'"': 12.0, "}": 8.0, "]": 8.0}


def normalised(ones: int) -> float:
    """Value, after an RMS norm, of a residual channel holding 1 when `ones` channels hold 1.

    The other channels hold the embedding's noise (standard deviation 0.05).
    """
    return float(np.sqrt(WIDTH / (ones + (WIDTH - ones) * 0.05 ** 2)))


def weights(vocab: Tokenizer, rng: np.random.Generator, eos_prior: float) -> dict[str, np.ndarray]:
    """Random blocks around reserved residual channels that the random parts never touch.

    CONSTANT is 1 in every token's embedding, so after the final RMS norm it is about constant and
    `output.weight[:, CONSTANT]` adds each token's prior to its logit. The rest are the tool-call
    rules (the random parts add context-dependent noise, a few logits at most). Two heads of block
    0 look for `<tools>` (the chat template lists tools inside <tools>...</tools>): TOOLS_ANY is 1
    at every token when it is anywhere before, TOOLS_FLAG only at a newline or a "}" token.

    - With tools, a newline is followed by `<tool_call>`: the prompt ends with
      "<|im_start|>assistant\n", so the answer opens with a call. llama.cpp's grammar for
      `tool_choice: "required"` allows text before the mandatory call, so this is what makes a
      required call happen at all (a model that never opens one writes text up to the token cap).
    - `<tool_call>` is followed by "\n": the grammar's call starts with "<tool_call>\n", and it
      passes "<tool_call>" followed by anything else as text.
    - With tools, the CLOSERS are likely wherever the grammar allows them: strings, arrays and
      objects end soon. A "}" is followed by `</tool_call>`: after a call's JSON object the grammar
      also allows ", {" and another call in the same tag, which the JSON pieces' priors would prefer
      forever (inside the object the grammar masks `</tool_call>`).
    - `</tool_call>` is followed by the end of turn.
    Without tools every rule is off and the answer is text.
    """
    n_vocab = len(vocab.tokens)
    priors = np.array(vocab.priors, dtype=np.float32)
    priors[vocab.ids["<|im_end|>"]] = eos_prior
    ids = vocab.ids
    newline = ids[vocab.alphabet[ord("\n")]]

    def random(rows: int, cols: int, scale: float) -> np.ndarray:
        return rng.normal(0.0, scale, (rows, cols)).astype(np.float32)

    embedding = random(n_vocab, WIDTH, 0.05)
    embedding[:, :RESERVED] = 0.0
    embedding[:, CONSTANT] = 1.0
    for token, mark in ((ids["<tools>"], TOOLS_MARK), (newline, NEWLINE_MARK), (ids["<tool_call>"], OPEN_MARK),
                        (ids["</tool_call>"], CLOSE_MARK)):
        embedding[token, mark] = 1.0
    embedding[[ids[t] for t in vocab.tokens if t.endswith("}")], BRACE_MARK] = 1.0
    output = random(n_vocab, WIDTH, 0.5)
    output[:, :RESERVED] = 0.0
    output[:, CONSTANT] = priors / normalised(1)
    for text, boost in CLOSERS.items():  # at a plain token with tools, CONSTANT and TOOLS_ANY are 1
        output[ids[text], TOOLS_ANY] = boost / normalised(2)
    # TOOLS_FLAG is set at newlines and braces alike; subtracting the other mark keeps each rule to
    # its own token (at a flagged token CONSTANT, TOOLS_ANY, TOOLS_FLAG and one mark are 1).
    flagged = BOOST / normalised(4)
    output[ids["<tool_call>"], [TOOLS_FLAG, BRACE_MARK]] = flagged, -flagged
    output[ids["</tool_call>"], [TOOLS_FLAG, NEWLINE_MARK]] = flagged, -flagged
    output[newline, OPEN_MARK] = BOOST / normalised(3)
    output[ids["<|im_end|>"], CLOSE_MARK] = BOOST / normalised(3)
    tensors = {"token_embd.weight": embedding, "output_norm.weight": np.ones(WIDTH, np.float32),
               "output.weight": output}
    for block in range(BLOCKS):
        readers = {"attn_q": random(WIDTH, WIDTH, 0.1), "attn_k": random(WIDTH, WIDTH, 0.1),
                   "attn_v": random(WIDTH, WIDTH, 0.1), "ffn_gate": random(FFN, WIDTH, 0.1),
                   "ffn_up": random(FFN, WIDTH, 0.1)}
        writers = {"attn_output": random(WIDTH, WIDTH, 0.05), "ffn_down": random(WIDTH, FFN, 0.05)}
        for matrix in readers.values():
            matrix[:, :RESERVED] = 0.0
        for matrix in writers.values():
            matrix[:RESERVED, :] = 0.0
        if block == 0:
            attention = readers["attn_q"], readers["attn_k"], readers["attn_v"], writers["attn_output"]
            tools_head(*attention, head=0, queries=[CONSTANT], flag=TOOLS_ANY)
            tools_head(*attention, head=1, queries=[NEWLINE_MARK, BRACE_MARK], flag=TOOLS_FLAG)
        for name, matrix in {**readers, **writers}.items():
            tensors[f"blk.{block}.{name}.weight"] = matrix
        tensors[f"blk.{block}.attn_norm.weight"] = np.ones(WIDTH, np.float32)
        tensors[f"blk.{block}.ffn_norm.weight"] = np.ones(WIDTH, np.float32)
    return tensors


def tools_head(q: np.ndarray, k: np.ndarray, v: np.ndarray, o: np.ndarray, *, head: int,
               queries: list[int], flag: int) -> None:
    """Make `head` write 1 to `flag` at tokens marked in `queries` when `<tools>` is before them.

    One head dimension, the first of the slowest RoPE pair: the query is large only at the query
    tokens and the key only at `<tools>`, so a query token attends to the `<tools>` tokens (score
    at least 30, at any distance) and reads their value, 1; without `<tools>` every value is 0.
    At other tokens the query is 0 and attention is spread over the whole prompt: the flag is
    (number of <tools>) / (prompt length), a few hundredths at most.
    """
    size = WIDTH // HEADS
    rows, dim = slice(head * size, (head + 1) * size), head * size + size - 2
    for matrix in (q, k, v):
        matrix[rows, :] = 0.0
    o[:, rows] = 0.0
    q[dim, queries] = k[dim, TOOLS_MARK] = 2.0
    v[dim, TOOLS_MARK] = 1.0
    o[flag, dim] = 1.0 / normalised(2)  # <tools> holds 1 in CONSTANT and in TOOLS_MARK


def write(path: Path, vocab: Tokenizer, tensors: dict[str, np.ndarray]) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("gateway-e2e-tiny")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(WIDTH)
    writer.add_block_count(BLOCKS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(WIDTH // HEADS)
    writer.add_rope_freq_base(ROPE_BASE)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(len(vocab.tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    writer.add_bos_token_id(vocab.ids["<|endoftext|>"])
    writer.add_eos_token_id(vocab.ids["<|im_end|>"])
    writer.add_pad_token_id(vocab.ids["<|endoftext|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(TEMPLATE)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--eos-prior", type=float, default=6.0,
                        help="logit prior of the end-of-turn token (higher: shorter answers)")
    args = parser.parse_args(argv)
    vocab = Tokenizer()
    tensors = weights(vocab, np.random.default_rng(args.seed), args.eos_prior)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write(args.out, vocab, tensors)
    parameters = sum(array.size for array in tensors.values())
    print(f"wrote {args.out}: {len(vocab.tokens)} tokens, {len(vocab.merges)} merges, {parameters} parameters",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
