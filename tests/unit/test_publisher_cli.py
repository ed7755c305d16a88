"""`python -m publisher`: argument and input errors are one line on stderr and exit 2, before
any connection to Redis (the URL given points nowhere, so a connection attempt would show)."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from publisher.__main__ import build_parser, main

NOWHERE = "redis://127.0.0.1:1/0"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["--redis-url", NOWHERE, *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("argv", "words"), [
    ((), "the following arguments are required: COMMAND"),
    (("frob",), "invalid choice: 'frob'"),
    (("emit",), "the following arguments are required: event"),
    (("emit", "x", "{}"), "one of the arguments --user --room --all is required"),
    (("emit", "x", "{}", "--user", "1", "--all"), "not allowed with argument"),
    (("join", "42"), "the following arguments are required: ROOM"),
    (("kick",), "the following arguments are required: user"),
    (("count", "extra"), "unrecognized arguments: extra"),
    (("emit", "x", "{bad", "--user", "1"), "the payload is not valid JSON"),
    (("emit", "x", "", "--user", "1"), "the payload is not valid JSON"),
    (("emit", "connect", "{}", "--all"), "'connect' is reserved by Socket.IO"),
    (("emit", "a b", "{}", "--all"), "is not an event name"),
    (("emit", "x", "{}", "--room", "admin:lobby"), "the only admin room is 'admin:all'"),
    (("emit", "x", "{}", "--user", "a\tb"), "character '\\t'"),
    (("emit", "coins:earned", '{"amount": 1}', "--user", "1", "--strict"), "coins:earned: reason is required"),
    (("emit", "coins:earned", '{"amount": "1", "reason": "r", "newBalance": 1}', "--user", "1", "--strict"),
     "coins:earned: amount must be an integer, got '1'"),
    (("emit", "x", '{"a": "\\u0000"}', "--user", "1"), "data.a: control character U+0000"),
    (("join", "42", "quiz:" + "9" * 300), "the limit is 300"),
    (("join", "42", "user:43"), "belongs to another user"),
    (("leave", "42", "user:42"), "cannot be left"),
])
def test_usage_and_input_errors_exit_2_with_one_line(
        capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], words: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith("publisher: ")
    assert words in err, err
    assert "Traceback" not in err


def test_bad_redis_url_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--redis-url", "http://localhost", "count"])
    _, err = capsys.readouterr()
    assert code == 2
    assert "unsupported scheme 'http'" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(("url", "words"), [
    ("redis+cluster://", "no node address"),
    ("redis+cluster://a:6379/3", "database 0 only"),
    ("redis+cluster://a:99999", "bad port"),
    ("redis+cluster://:hunter2@a:1?ssl_ca_certs=x", "needs TLS: use rediss+cluster://"),
])
def test_bad_cluster_url_exits_2(capsys: pytest.CaptureFixture[str], url: str, words: str) -> None:
    code = main(["--redis-url", url, "emit", "x", "{}", "--all"])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert words in err, err
    assert "hunter2" not in err
    assert err.count("\n") == 1


def test_payload_from_stdin_is_read_before_connecting(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("[not json"))
    code, _, err = run(capsys, "emit", "x", "-", "--all")
    assert code == 2
    assert "not valid JSON" in err


def test_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://example:6380/2")
    monkeypatch.setenv("CHANNEL_PREFIX", "cp")
    monkeypatch.setenv("KEY_PREFIX", "kp")
    args = build_parser().parse_args(["count"])
    assert (args.redis_url, args.channel_prefix, args.key_prefix) == (
        "redis://example:6380/2", "cp", "kp")
    monkeypatch.delenv("REDIS_URL")
    assert build_parser().parse_args(["count"]).redis_url == "redis://127.0.0.1:6379/0"


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("emit", "join", "leave", "kick", "online", "count"):
        assert command in out
    assert "redis+cluster://" in out


def test_runs_as_a_module() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "publisher", "--redis-url", NOWHERE, "emit", "x", "{", "--all"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("publisher: the payload is not valid JSON")
    assert proc.stdout == ""
