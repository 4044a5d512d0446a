"""``twistd serverpush`` options and service tree, and the process around them."""

import socket
import subprocess
from importlib import metadata
from ipaddress import ip_network

import pytest
from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.plugin import getPlugins

import twistedpush
from tests.conftest import PushServer, free_port, twistd
from twistedpush import tap
from twistedpush.notifier import NotifierFactory
from twistedpush.tap import CannotBind, Options, build_service, check_ports, makeService


def parse(*args):
    options = Options()
    options.parseOptions(list(args))
    return options


def test_defaults_are_the_contracts(monkeypatch):
    monkeypatch.delenv("SERVERPUSH_SECRET", raising=False)
    monkeypatch.delenv("SERVERPUSH_PUBLISHER_KEY", raising=False)
    options = parse()
    assert options["publisher-key"] is None
    assert options["trusted-proxy"] == []
    assert options["request-timeout"] == 30
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
        "--redis", "redis://example:6380/2", "--publisher-key", "pk",
        "--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "192.0.2.7",
        "--trusted-proxy", "2001:db8::1", "--trusted-proxy", "198.51.100.9/24",
        "--request-timeout", "2.5",
    )  # fmt: skip
    assert options["publisher-key"] == "pk"
    assert options["trusted-proxy"] == [
        ip_network("10.0.0.0/8"),
        ip_network("192.0.2.7/32"),
        ip_network("2001:db8::1/128"),
        ip_network("198.51.100.0/24"),
    ]
    assert options["request-timeout"] == 2.5
    assert (options["port"], options["notifier"]) == ("tcp:9000", "unix:/tmp/n.sock")
    assert (options["history-size"], options["history-ttl"]) == (5, 1.5)
    assert options["secret"] == "k"
    assert options["public"] == ["a.*", "b"]
    assert options["redis"] == ["redis://example:6380/2"]
    assert options["redis-shards"] == [
        {"host": "example", "port": 6380, "dbid": 2, "password": None}
    ]


def test_secret_from_environment(monkeypatch):
    monkeypatch.setenv("SERVERPUSH_SECRET", "from-env")
    assert parse()["secret"] == "from-env"
    assert parse("--secret", "flag")["secret"] == "flag"


def test_publisher_key_from_environment(monkeypatch):
    monkeypatch.setenv("SERVERPUSH_PUBLISHER_KEY", "from-env")
    assert parse()["publisher-key"] == "from-env"
    assert parse("--publisher-key", "flag")["publisher-key"] == "flag"
    monkeypatch.setenv("SERVERPUSH_PUBLISHER_KEY", "")
    assert parse()["publisher-key"] is None  # empty: no key


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
        (["--trusted-proxy", "10.0.0.0/33"], "--trusted-proxy"),
        (["--trusted-proxy", "proxy.example"], "--trusted-proxy"),
        (["--trusted-proxy", ""], "--trusted-proxy"),
        (["--request-timeout", "0"], "--request-timeout"),
        (["--request-timeout", "inf"], "--request-timeout"),
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
    service = build_service(parse("--port", "tcp:18013", "--notifier", "tcp:18014"), reactor)
    service.startService()
    ports = sorted(port for port, *_ in reactor.tcpServers)
    assert ports == [18013, 18014]
    service.stopService()


def test_plugin_is_found():
    import twisted.plugins

    makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker, twisted.plugins)}
    assert makers["serverpush"].module == "twistedpush.tap"


def _factories(reactor):
    return [factory for _port, factory, *_ in reactor.tcpServers]


def test_make_service_passes_the_new_options_on():
    reactor = MemoryReactorClock()
    options = parse(
        "--port", "tcp:18013", "--notifier", "tcp:18014:interface=127.0.0.1",
        "--publisher-key", "pk", "--trusted-proxy", "10.0.0.0/8", "--request-timeout", "7",
    )  # fmt: skip
    service = build_service(options, reactor)
    service.startService()
    [site] = [f for f in _factories(reactor) if hasattr(f, "admission")]
    assert site.admission.limits.trusted_proxies == (ip_network("10.0.0.0/8"),)
    assert site.admission.limits.request_timeout == 7
    [notifier] = [f for f in _factories(reactor) if isinstance(f, NotifierFactory)]
    assert notifier.key == "pk"
    service.stopService()


@pytest.mark.parametrize(
    ("notifier", "key", "warned"),
    [
        ("tcp:18014", None, True),
        ("tcp:18014:interface=0.0.0.0", None, True),
        ("tcp6:18014", None, True),
        ("tcp:18014:interface=192.0.2.1", None, True),
        ("tcp:18014", "pk", False),
        ("tcp:18014:interface=127.0.0.1", None, False),
        ("tcp6:18014:interface=\\:\\:1", None, False),
        ("tcp:18014:interface=localhost", None, False),
        ("unix:/tmp/serverpush-notifier.sock", None, False),
    ],
)
def test_a_notifier_open_to_the_network_without_a_key_is_warned_about(
    monkeypatch, notifier, key, warned
):
    monkeypatch.delenv("SERVERPUSH_PUBLISHER_KEY", raising=False)
    args = ["--port", "tcp:18013", "--notifier", notifier]
    with capturedLogs() as events:
        build_service(
            parse(*args, *(["--publisher-key", key] if key else [])), MemoryReactorClock()
        )
    warnings = [e for e in events if "without --publisher-key" in e.get("log_format", "")]
    assert len(warnings) == int(warned)


def test_check_ports_names_the_taken_listener():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        free = free_port()
        reactor = MemoryReactorClock()
        for key, other in (("port", "notifier"), ("notifier", "port")):
            options = parse(
                f"--{key}", f"tcp:{port}:interface=127.0.0.1",
                f"--{other}", f"tcp:{free}:interface=127.0.0.1",
            )  # fmt: skip
            with pytest.raises(CannotBind, match=rf"^--{key} .*127\.0\.0\.1:{port}: .*in use"):
                check_ports(options, reactor)
    check_ports(parse("--port", "tcp:0", "--notifier", "unix:/tmp/x.sock"), reactor)
    check_ports(options, reactor)  # free again


def test_twistd_entry_point_stops_on_a_taken_port_in_one_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        options = parse("--port", f"tcp:{port}:interface=127.0.0.1", "--notifier", "tcp:0")
        with pytest.raises(SystemExit) as exit_info:
            makeService(options)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("serverpush: error: --port ")


def test_version_comes_from_the_package_metadata(capsys, monkeypatch):
    assert twistedpush.__version__ == metadata.version("twistedpush")
    with pytest.raises(SystemExit) as exit_info:
        parse("--version")
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"twistedpush {metadata.version('twistedpush')}\n"

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(tap.metadata, "version", not_installed)
    monkeypatch.setattr(twistedpush, "__version__", "9.9.9")
    assert tap.package_version() == "9.9.9"


# The process


def run_twistd(*args, cwd):
    return subprocess.run(
        [twistd(), "--pidfile=", "-n", "serverpush", *args],
        cwd=cwd, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize("taken", ["port", "notifier"])
def test_a_port_in_use_is_one_line_and_a_non_zero_exit(tmp_path, taken):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        ports = {"port": free_port(), "notifier": free_port(), taken: port}
        result = run_twistd(
            "--port", f"tcp:{ports['port']}:interface=127.0.0.1",
            "--notifier", f"tcp:{ports['notifier']}:interface=127.0.0.1",
            cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith(f"serverpush: error: --{taken} ")
    assert result.stderr.count("\n") == 1 and f"127.0.0.1:{port}" in result.stderr
    assert result.stdout == ""  # twistd had not begun: nothing started, nothing listened


@pytest.mark.integration
def test_version_of_the_real_command(tmp_path):
    result = run_twistd("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout == f"twistedpush {metadata.version('twistedpush')}\n"


@pytest.mark.integration
def test_the_real_server_warns_when_its_notifier_is_open_without_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv("SERVERPUSH_PUBLISHER_KEY", raising=False)
    server = PushServer(tmp_path)
    server.args = ["--notifier", f"tcp:{server.notifier_port}"]
    try:
        server.start()
    finally:
        server.stop()
    assert "without --publisher-key" in server.log.read_text()


# runserverpush


def test_runserverpush_passes_the_settings_on(settings, monkeypatch):
    from django_adapter.management.commands.runserverpush import server_arguments

    monkeypatch.delenv("SERVERPUSH_PUBLISHER_KEY", raising=False)
    settings.SERVERPUSH_PUBLISHER_KEY = "pk"
    settings.SERVERPUSH_TRUSTED_PROXIES = ["10.0.0.0/8", "192.0.2.1"]
    settings.SERVERPUSH_ALLOWED_ORIGINS = ["https://*.example.com"]
    options = parse(*server_arguments())
    assert options["publisher-key"] == "pk"
    assert options["trusted-proxy"] == [ip_network("10.0.0.0/8"), ip_network("192.0.2.1/32")]
    assert options["allowed-origin"] == ["https://*.example.com"]
    settings.SERVERPUSH_PUBLISHER_KEY = None
    assert "--publisher-key" not in server_arguments()


@pytest.mark.integration
def test_runserverpush_stops_on_a_taken_port_before_listening(settings):
    from django.core.management import CommandError, call_command

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        settings.SERVERPUSH_NOTIFIER_PORT = holder.getsockname()[1]
        settings.SERVERPUSH_PORT = free_port()
        with pytest.raises(CommandError, match=r"cannot start the push server: --notifier "):
            call_command("runserverpush")


def test_port_and_notifier_on_the_same_port_is_one_line_too():
    port = free_port()
    reactor = MemoryReactorClock()
    for port_option, notifier in (
        (f"tcp:{port}", f"tcp:{port}:interface=127.0.0.1"),
        (f"tcp:{port}:interface=127.0.0.1", f"tcp:{port}:interface=127.0.0.1"),
    ):
        options = parse("--port", port_option, "--notifier", notifier)
        with pytest.raises(CannotBind, match=rf"both listen on port {port}$"):
            check_ports(options, reactor)
    other = parse(
        "--port", f"tcp:{port}:interface=127.0.0.1", "--notifier", f"tcp:{port}:interface=127.0.0.2"
    )  # fmt: skip
    check_ports(other, reactor)  # two loopback addresses: no clash
