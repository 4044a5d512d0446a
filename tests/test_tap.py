"""``twistd serverpush`` options and service tree."""

import pytest
from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins

from twistedpush.tap import Options, makeService


def parse(*args):
    options = Options()
    options.parseOptions(list(args))
    return options


def test_defaults_are_the_contracts(monkeypatch):
    monkeypatch.delenv("SERVERPUSH_SECRET", raising=False)
    options = parse()
    assert options["port"] == "tcp:8013"
    assert options["notifier"] == "tcp:8014:interface=127.0.0.1"
    assert options["history-size"] == 100
    assert options["history-ttl"] == 3600
    assert options["secret"] is None
    assert options["public"] == []
    assert options["redis"] is None


def test_every_option(monkeypatch):
    monkeypatch.delenv("SERVERPUSH_SECRET", raising=False)
    options = parse(
        "--port", "tcp:9000", "--notifier", "unix:/tmp/n.sock", "--history-size", "5",
        "--history-ttl", "1.5", "--secret", "k", "--public", "a.*", "--public", "b",
        "--redis", "redis://example:6380/2",
    )  # fmt: skip
    assert (options["port"], options["notifier"]) == ("tcp:9000", "unix:/tmp/n.sock")
    assert (options["history-size"], options["history-ttl"]) == (5, 1.5)
    assert options["secret"] == "k"
    assert options["public"] == ["a.*", "b"]
    assert options["redis-args"] == {"host": "example", "port": 6380, "dbid": 2, "password": None}


def test_secret_from_environment(monkeypatch):
    monkeypatch.setenv("SERVERPUSH_SECRET", "from-env")
    assert parse()["secret"] == "from-env"
    assert parse("--secret", "flag")["secret"] == "flag"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--port", "nonsense:1"], "--port"),
        (["--notifier", "tcp:notaport"], "--notifier"),
        (["--history-size", "0"], "--history-size"),
        (["--history-size", "many"], "--history-size"),
        (["--history-ttl", "-3"], "--history-ttl"),
        (["--history-ttl", "nan"], "--history-ttl"),
        (["--redis", "http://localhost"], "redis://"),
        (["--redis", "redis://localhost:99999/0"], "port"),
        (["--redis", "redis://localhost/db"], "database"),
        (["--max-subscriptions", "0"], "--max-subscriptions"),
        (["--unknown"], "unknown"),
    ],
)
def test_bad_options_one_line_and_non_zero_exit(capsys, args, words):
    with pytest.raises(SystemExit) as exit_info:
        parse(*args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("serverpush: error:")
    assert words in err


def test_make_service_listens_on_both_ports():
    reactor = MemoryReactorClock()
    service = makeService(parse("--port", "tcp:18013", "--notifier", "tcp:18014"), reactor)
    service.startService()
    ports = sorted(port for port, *_ in reactor.tcpServers)
    assert ports == [18013, 18014]
    service.stopService()


def test_plugin_is_found():
    import twisted.plugins

    makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker, twisted.plugins)}
    assert makers["serverpush"].module == "twistedpush.tap"
