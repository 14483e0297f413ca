"""`gateway serve`: help, config errors, flags over the file, env expansion, the shipped config."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from gateway.config import ServerConfig, UpstreamConfig, expand_env, load_config, parse_config
from gateway.errors import ConfigError

from .conftest import free_port, gateway_process

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, stdin: bytes = b"", **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m gateway ARGS` with `stdin`; stdout and stderr decoded."""
    import os
    result = subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT, capture_output=True, input=stdin,
                            timeout=30, env={**os.environ, **env})
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(errors="replace"),
                                       result.stderr.decode(errors="replace"))


def assert_one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    """A CLI error: exit status 2, one line on stderr that starts with `expected`, no traceback."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(expected), result.stderr


def test_serve_help():
    result = cli("serve", "--help")
    assert result.returncode == 0
    for flag in ("--config", "--host", "--port", "--upstream-url", "--log-format", "--log-level"):
        assert flag in result.stdout
    assert "json" in result.stdout and "console" in result.stdout


def test_no_command_is_a_usage_error():
    result = cli()
    assert result.returncode == 2
    assert result.stderr == "gateway: the following arguments are required: command (see gateway --help)\n"


@pytest.mark.parametrize("yaml_text, key", [
    ("server:\n  port: abc\n", "server.port"),
    ("server:\n  prot: 8080\n", "server.prot"),
    ("upstream:\n  base_url: ftp://example.com\n", "upstream.base_url"),
    ("upstream:\n  hosted_tools: maybe\n", "upstream.hosted_tools"),
    ("server:\n  log_format: xml\n", "server.log_format"),
    ("upstream:\n  retries: -1\n", "upstream.retries"),
    ("upstream: [1, 2]\n", "upstream"),
    ("listen: 1\n", "listen"),
    ("server: {port: [1\n", "line"),
    # several upstreams, routing, keys
    ("upstream: {}\nupstreams: [{name: a, base_url: 'http://h/v1'}]\n", "upstreams"),
    ("upstreams: []\n", "upstreams"),
    ("upstreams: [{base_url: 'http://h/v1'}]\n", "upstreams[0].name"),
    ("upstreams: [{name: a}]\n", "upstreams[0].base_url"),
    ("upstreams: [{name: a/b, base_url: 'http://h/v1'}]\n", "upstreams[0].name"),
    ("upstreams: [{name: a, base_url: 'http://h/v1'}, {name: a, base_url: 'http://h/v1'}]\n", "upstreams[1].name"),
    ("upstreams: [{name: a, base_url: 'ftp://h'}]\n", "upstreams[0].base_url"),
    ("upstreams: [{name: a, base_url: 'http://h/v1', retries: x}]\n", "upstreams[0].retries"),
    ("upstreams: [{name: a, base_url: 'http://h/v1', think_tags: maybe}]\n", "upstreams[0].think_tags"),
    ("upstreams: [{name: a, base_url: 'http://h/v1', modles: [m]}]\n", "upstreams[0].modles"),
    ("upstreams: [{name: a, base_url: 'http://h/v1', models: m}]\n", "upstreams[0].models"),
    ("upstreams: [{name: a, base_url: 'http://h/v1', aliases: [m]}]\n", "upstreams[0].aliases"),
    ("upstreams: [{name: a, base_url: 'http://h/v1', fallbacks: [b]}]\n", "upstreams[0].fallbacks"),
    ("upstreams: [{name: a, base_url: 'http://h/v1', models: [m]}, {name: b, base_url: 'http://h/v1', "
     "aliases: {m: x}}]\n", "upstreams[1].models"),
    ("upstreams: [not-a-mapping]\n", "upstreams[0]"),
    ("routing: {default: nowhere}\n", "routing.default"),
    ("routing: {breaker_failures: 0}\n", "routing.breaker_failures"),
    ("routing: {breaker_cooldown: soon}\n", "routing.breaker_cooldown"),
    ("auth: {keys: [{sha256: " + "a" * 64 + "}]}\n", "auth.keys[0].name"),
    ("auth: {keys: [{name: k, sha256: abc}]}\n", "auth.keys[0].sha256"),
    ("auth: {keys: [{name: k, sha256: " + "a" * 64 + "}, {name: k, sha256: " + "b" * 64 + "}]}\n",
     "auth.keys[1].name"),
    ("auth: {keys: [{name: k, sha256: " + "a" * 64 + ", max_concurrent_streams: -1}]}\n",
     "auth.keys[0].max_concurrent_streams"),
    ("auth: {keys: [{name: k, sha256: " + "a" * 64 + ", models: gpt}]}\n", "auth.keys[0].models"),
    ("auth: {keys_file: /nonexistent/keys.yaml}\n", "auth.keys_file"),
    ("auth: {tokens: []}\n", "auth.tokens"),
    ("auth: [1]\n", "auth"),
])
def test_bad_config_one_line_naming_the_key_exit_2(tmp_path, capsys, yaml_text, key):
    """In-process through cli.main (fast); one case below also runs the real subprocess."""
    from gateway.cli import main
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    assert main(["serve", "--config", str(config)]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gateway serve: bad config: ")
    assert key in lines[0]
    assert out == ""


def test_bad_config_subprocess(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("server:\n  port: abc\n")
    result = cli("serve", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr == "gateway serve: bad config: server.port: must be a number, got 'abc'\n"
    assert result.stdout == ""


def test_missing_config_file(tmp_path, capsys):
    from gateway.cli import main
    assert main(["serve", "--config", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "nope.yaml" in err


def test_bad_flag_value_exit_2(capsys):
    from gateway.cli import main
    with pytest.raises(SystemExit) as info:
        main(["serve", "--port", "abc"])
    assert info.value.code == 2
    assert "--port" in capsys.readouterr().err


def test_flags_override_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("server:\n  host: 0.0.0.0\n  port: 9000\n  log_format: console\n"
                      "upstream:\n  base_url: http://127.0.0.1:1/v1\n  retries: 5\n")
    loaded = load_config(config, {"server": {"host": "127.0.0.2", "port": 9001, "log_format": None},
                                  "upstream": {"base_url": "http://127.0.0.1:2/v1"}})
    assert loaded.server.host == "127.0.0.2" and loaded.server.port == 9001
    assert loaded.server.log_format == "console"  # a flag that was not given leaves the file's value
    assert loaded.upstream.base_url == "http://127.0.0.1:2/v1"
    assert loaded.upstream.retries == 5


def test_bad_flag_override_names_the_key():
    with pytest.raises(ConfigError, match="upstream.base_url"):
        load_config(None, {"upstream": {"base_url": "localhost:11434"}})


# ---------------------------------------------------------------------------------------- env expansion
def test_expand_env():
    env = {"A": "alpha", "EMPTY": ""}
    assert expand_env("${A}", env) == "alpha"
    assert expand_env("x-${A}-y", env) == "x-alpha-y"
    assert expand_env("${MISSING}", env) == ""
    assert expand_env("${MISSING:-fallback}", env) == "fallback"
    assert expand_env("${A:-fallback}", env) == "alpha"
    assert expand_env("${EMPTY:-fallback}", env) == "fallback"
    assert expand_env("${MISSING:-http://h:1/v1}", env) == "http://h:1/v1"
    assert expand_env("$A and {A}", env) == "$A and {A}"
    assert expand_env("${A}${A}", env) == "alphaalpha"


def test_env_expansion_in_config_file(tmp_path, monkeypatch):
    monkeypatch.setenv("GW_TEST_PORT", "9123")
    monkeypatch.setenv("GW_TEST_KEY", "sk-from-env")
    monkeypatch.delenv("GW_TEST_UNSET", raising=False)
    config = tmp_path / "c.yaml"
    config.write_text("server:\n  port: ${GW_TEST_PORT}\n  keepalive_interval: ${GW_TEST_UNSET:-2.5}\n"
                      "  uvloop: ${GW_TEST_UNSET:-false}\n"
                      "upstream:\n  api_key: ${GW_TEST_KEY}\n  base_url: ${GW_TEST_UNSET:-http://10.0.0.1:8000/v1}\n")
    loaded = load_config(config)
    assert loaded.server.port == 9123 and isinstance(loaded.server.port, int)
    assert loaded.server.keepalive_interval == 2.5
    assert loaded.server.uvloop is False
    assert loaded.upstream.api_key == "sk-from-env"
    assert loaded.upstream.base_url == "http://10.0.0.1:8000/v1"


def test_env_expansion_bad_value_names_the_key(monkeypatch):
    monkeypatch.setenv("GW_TEST_PORT", "eighty")
    with pytest.raises(ConfigError, match=r"^server\.port: "):
        parse_config({"server": {"port": "${GW_TEST_PORT}"}})


def test_api_key_not_in_repr():
    assert "sk-hidden" not in repr(UpstreamConfig(api_key="sk-hidden"))


# ---------------------------------------------------------------------------------------- shipped config
def test_shipped_config_defaults(monkeypatch):
    monkeypatch.delenv("UPSTREAM_BASE_URL", raising=False)
    monkeypatch.delenv("UPSTREAM_API_KEY", raising=False)
    loaded = load_config(ROOT / "config.yaml")
    assert loaded.server.host == "127.0.0.1" and loaded.server.port == 8080
    assert loaded.upstream.base_url == "http://127.0.0.1:11434/v1"
    assert loaded.upstream.api_key == ""
    # The shipped file spells out the built-in defaults.
    assert loaded.server == ServerConfig()
    assert loaded.upstream == UpstreamConfig()


def test_shipped_config_reads_env(monkeypatch):
    monkeypatch.setenv("UPSTREAM_BASE_URL", "http://127.0.0.1:8000/v1")
    monkeypatch.setenv("UPSTREAM_API_KEY", "sk-x")
    loaded = load_config(ROOT / "config.yaml")
    assert loaded.upstream.base_url == "http://127.0.0.1:8000/v1" and loaded.upstream.api_key == "sk-x"


def test_defaults_without_a_file():
    loaded = load_config(None)
    assert (loaded.server.host, loaded.server.port) == ("127.0.0.1", 8080)
    assert loaded.upstream.base_url == "http://127.0.0.1:11434/v1"


# ---------------------------------------------------------------------------------------- the real process
async def test_subprocess_serves_healthz_with_flags_over_file(tmp_path, http):
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text("server:\n  port: 1\n  log_format: console\nupstream:\n  base_url: http://127.0.0.1:1/v1\n")
    async with gateway_process("--config", str(config), "--port", str(port), "--log-format", "json",
                               "--upstream-url", "http://127.0.0.1:2/v1") as gw:
        assert gw.url == f"http://127.0.0.1:{port}"
        async with http.get(f"{gw.url}/healthz") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok"}
            assert response.headers["X-Request-ID"].startswith("req_")
        async with http.get(f"{gw.url}/readyz") as response:
            assert response.status == 503  # nothing listens on the upstream port
    assert gw.returncode == 0  # SIGTERM is a clean shutdown
    assert '"gateway.started"' in gw.output  # --log-format json won over the file's console
    assert '"upstreams":{"default":"http://127.0.0.1:2/v1"}' in gw.output


async def test_subprocess_port_in_use_is_one_line_exit_2(tmp_path):
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = cli("serve", "--port", str(port))
    assert_one_line_error(result, f"gateway serve: cannot listen on 127.0.0.1:{port}: Address already in use")


# ---------------------------------------------------------------------------------------- log formats
@pytest.mark.parametrize("fmt", ["json", "console"])
def test_log_formats(capsys, fmt):
    import json

    import structlog

    from gateway.log import configure_logging, get_logger
    try:
        configure_logging(fmt, "info", secrets=["sk-live-secret"])
        get_logger().info("demo.event", request_id="r1", api_key="sk-live-secret", note="uses sk-live-secret")
        get_logger().debug("demo.hidden")
    finally:
        structlog.reset_defaults()
    out = capsys.readouterr().out
    assert "sk-live-secret" not in out and "demo.hidden" not in out
    lines = out.strip().splitlines()
    assert len(lines) == 1
    if fmt == "json":
        line = json.loads(lines[0])
        assert line["event"] == "demo.event" and line["level"] == "info" and line["request_id"] == "r1"
        assert line["api_key"] == "[redacted]" and line["note"] == "uses [redacted]"
    else:
        assert "demo.event" in lines[0] and "request_id=r1" in lines[0]
        with pytest.raises(ValueError):
            json.loads(lines[0])


def test_upstream_url_flag_with_an_upstreams_list(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("upstreams:\n  - {name: a, base_url: 'http://127.0.0.1:1/v1'}\n")
    assert load_config(config, {"upstream": {"base_url": None}}).upstreams[0].name == "a"
    with pytest.raises(ConfigError, match="^--upstream-url: "):
        load_config(config, {"upstream": {"base_url": "http://127.0.0.1:2/v1"}})


# ---------------------------------------------------------------------------------------- every subcommand's errors
@pytest.fixture
def paths(tmp_path: Path) -> dict[str, str]:
    """Files the error cases name: {missing}, {dir}, {loop} (a symlink to itself: unreadable even as
    root), {under_file} (a path through a file), {latin1} (not UTF-8), {not_json}, {not_capture}, …"""
    capture = orjson.loads((ROOT / "tests" / "captures" / "text.json").read_bytes())
    files = {"latin1": "server:\n  host: caf\xe9\n".encode("latin-1"), "bad_yaml": b"server: {port: [1\n",
             "not_json": b"{not json", "not_capture": b'{"format": "something else"}',
             "bad_events": orjson.dumps({**capture, "client_events": [1, 2]}),
             "bad_reads": orjson.dumps({**capture, "upstream_reads": [{"base64": "!!"}]}),
             "bad_settings": orjson.dumps({**capture, "upstream_settings": {"think_tags": 5}})}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    return {"missing": str(tmp_path / "missing"), "dir": str(tmp_path), "loop": str(tmp_path / "loop"),
            "under_file": str(tmp_path / "latin1" / "x"), **{name: str(tmp_path / name) for name in files}}


ERRORS: dict[str, tuple[list[str], bytes, str]] = {
    # id: (arguments, stdin, the start of the one stderr line)
    "unknown command": (["nope"], b"", "gateway: argument command: invalid choice: 'nope'"),
    "serve missing config": (["serve", "--config", "{missing}"], b"",
                             "gateway serve: bad config: config: cannot read {missing}: No such file or directory"),
    "serve config is a directory": (["serve", "--config", "{dir}"], b"",
                                    "gateway serve: bad config: config: cannot read {dir}: Is a directory"),
    "serve config unreadable": (["serve", "--config", "{loop}"], b"",
                                "gateway serve: bad config: config: cannot read {loop}: Too many levels of symbolic"),
    "serve config under a file": (["serve", "--config", "{under_file}"], b"",
                                  "gateway serve: bad config: config: cannot read {under_file}: Not a directory"),
    "serve config not utf-8": (["serve", "--config", "{latin1}"], b"",
                               "gateway serve: bad config: config: {latin1} is not UTF-8 text"),
    "serve config bad yaml": (["serve", "--config", "{bad_yaml}"], b"",
                              "gateway serve: bad config: config: {bad_yaml} is not valid YAML at line 2"),
    "serve bad port": (["serve", "--port", "abc"], b"", "gateway serve: argument --port: invalid int value: 'abc'"),
    "serve port out of range": (["serve", "--port", "70000"], b"", "gateway serve: bad config: server.port: "),
    "serve bad log format": (["serve", "--log-format", "xml"], b"", "gateway serve: argument --log-format: "),
    "serve unknown flag": (["serve", "--bogus"], b"", "gateway: unrecognized arguments: --bogus"),
    "serve bad upstream url": (["serve", "--upstream-url", "localhost:1"], b"",
                               "gateway serve: bad config: upstream.base_url: "),
    "serve bad store": (["serve", "--store", "mongodb://x"], b"", "gateway serve: bad config: store.url: "),
    "serve address not ours": (["serve", "--host", "192.0.2.1", "--port", "0"], b"",
                               "gateway serve: cannot listen on 192.0.2.1:0: Cannot assign requested address"),
    "hash-key nothing on stdin": (["hash-key"], b"", "gateway hash-key: no key on stdin"),
    "hash-key not utf-8": (["hash-key"], b"\xff\xfe\n", "gateway hash-key: the key on stdin is not UTF-8 text"),
    "tail missing file": (["tail", "{missing}"], b"", "gateway tail: cannot read {missing}: No such file or directory"),
    "tail directory": (["tail", "{dir}"], b"", "gateway tail: cannot read {dir}: Is a directory"),
    "tail unreadable": (["tail", "{loop}"], b"", "gateway tail: cannot read {loop}: Too many levels of symbolic"),
    "tail bad flag": (["tail", "--failed=yes"], b"", "gateway tail: argument --failed: ignored explicit argument"),
    "check missing file": (["check", "--file", "{missing}"], b"",
                           "gateway check: cannot read {missing}: No such file or directory"),
    "check directory": (["check", "--file", "{dir}"], b"", "gateway check: cannot read {dir}: Is a directory"),
    "check unreadable": (["check", "--file", "{loop}"], b"", "gateway check: cannot read {loop}: Too many levels"),
    "check no model": (["check", "http://127.0.0.1:1/v1"], b"", "gateway check: give URL and --model"),
    "check not a url": (["check", "localhost:8080", "--model", "m"], b"",
                        "gateway check: URL must be http(s)://HOST[:PORT]/…, got 'localhost:8080'"),
    "check bad timeout": (["check", "http://127.0.0.1:1/v1", "--model", "m", "--timeout", "-1"], b"",
                          "gateway check: argument --timeout: must be a positive number of seconds, got '-1'"),
    "replay no file": (["replay"], b"", "gateway replay: the following arguments are required: FILE"),
    "replay missing file": (["replay", "{missing}"], b"",
                            "gateway replay: cannot read {missing}: No such file or directory"),
    "replay directory": (["replay", "{dir}"], b"", "gateway replay: cannot read {dir}: Is a directory"),
    "replay unreadable": (["replay", "{loop}"], b"", "gateway replay: cannot read {loop}: Too many levels"),
    "replay not json": (["replay", "{not_json}"], b"", "gateway replay: {not_json}: not JSON: "),
    "replay not a capture": (["replay", "{not_capture}"], b"",
                             "gateway replay: {not_capture}: not a gateway capture (gateway-capture/1)"),
    "replay bad events": (["replay", "{bad_events}"], b"",
                          "gateway replay: {bad_events}: client_events is not a list of events"),
    "replay bad base64": (["replay", "{bad_reads}"], b"", "gateway replay: {bad_reads}: an upstream read is not base64"),
    "replay bad settings": (["replay", "{bad_settings}"], b"",
                            "gateway replay: {bad_settings}: bad upstream_settings: upstream.think_tags: "),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_every_error_is_one_line_exit_2(paths, name):
    """Each subcommand, run as the real process, on a mistake: one stderr line, exit 2, no traceback."""
    arguments, stdin, expected = ERRORS[name]
    result = cli(*(argument.format(**paths) for argument in arguments), stdin=stdin)
    assert_one_line_error(result, expected.format(**paths))


def test_replay_goes_on_past_a_bad_file_and_exits_2(paths):
    good = str(ROOT / "tests" / "captures" / "text.json")
    result = cli("replay", "-q", good, paths["missing"], good)
    assert_one_line_error(result, f"gateway replay: cannot read {paths['missing']}: ")
    assert result.stdout.count("identical") == 2


def test_tail_into_a_reader_that_leaves_ends_quietly(tmp_path):
    """`gateway tail big.log | head -1`: the broken pipe is no error and no traceback."""
    log = tmp_path / "big.log"
    log.write_bytes(b'{"event": "response.finished", "request_id": "r", "status": "completed"}\n' * 50_000)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "tail", str(log)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert b"completed" in proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=30) == 0
    assert proc.stderr.read() == b""
    proc.stderr.close()
