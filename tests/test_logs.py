"""``--log-format json``: the lines log shippers get, from the observer and from a real
``twistd -n serverpush`` (and where twistd would have put its text log)."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python import log as legacy_log
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile

from tests.conftest import ROOT, free_port, twistd
from twistedpush.logs import ForwardedRecords, JSONLineObserver, event_as_json, twistd_log_file
from twistedpush.tap import Options


def logged(emit) -> list[dict]:
    """What a JSONLineObserver writes for the events ``emit(logger)`` logs, parsed."""
    out = io.StringIO()
    publisher = LogPublisher(JSONLineObserver(out))
    emit(Logger(namespace="tests.logs", observer=publisher))
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_line_holds_time_level_namespace_message_and_fields():
    [line] = logged(
        lambda log: log.warn("dropping {address}: {queued} bytes", address="192.0.2.1", queued=9)
    )
    assert line["level"] == "warn"
    assert line["namespace"] == "tests.logs"
    assert line["message"] == "dropping 192.0.2.1: 9 bytes"
    assert line["fields"] == {"address": "192.0.2.1", "queued": 9}
    assert line["time"].endswith("Z") and line["time"][10] == "T"


def test_time_is_iso_8601_utc_with_milliseconds():
    event = {"log_time": 1_700_000_000.25, "log_level": LogLevel.info, "log_format": "x"}
    assert json.loads(event_as_json(event))["time"] == "2023-11-14T22:13:20.250Z"


def test_fields_json_cannot_hold_are_left_out():
    class Thing:
        pass

    [line] = logged(
        lambda log: log.info(
            "{thing} {ratio} {raw}", thing=Thing(), ratio=float("nan"), raw=b"\xff", n=[1, 2]
        )
    )
    assert line["fields"] == {"n": [1, 2]}
    assert "Thing object" in line["message"]  # the text still says what it was


def test_a_failure_carries_its_traceback():
    def fail(log):
        try:
            {}["missing"]
        except KeyError:
            log.failure("publishing {channel} failed", channel="room")

    [line] = logged(fail)
    assert line["level"] == "critical"
    assert line["message"] == "publishing room failed"
    assert "KeyError" in line["traceback"] and "Traceback" in line["traceback"]
    assert line["fields"] == {"channel": "room"}


def test_legacy_log_events_and_errors():
    """twisted.python.log's messages (twisted.web's access log) and errors, as twistd
    bridges them to the new observers."""
    out = io.StringIO()
    legacy = legacy_log.LogPublisher(publishPublisher=LogPublisher(JSONLineObserver(out)))
    legacy.msg("GET /health", system="-")
    legacy.msg(failure=Failure(KeyError("k")), why="reading failed", isError=1)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "GET /health" and "fields" not in first
    assert second["level"] == "critical" and second["message"] == "reading failed"
    assert "KeyError" in second["traceback"]


def forwarded(name, emit) -> list[dict]:
    """The JSON lines of what ``emit(logger)`` logs through Python's logging."""
    out = io.StringIO()
    logger = logging.Logger(name)
    logger.addHandler(ForwardedRecords(JSONLineObserver(out)))
    emit(logger)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_python_logging_records_become_the_same_lines():
    request = object()  # Django passes its request: not for JSON
    [line] = forwarded(
        "django.request",
        lambda log: log.warning(
            "Not Found: %s", "/a{b}", extra={"status_code": 404, "request": request}
        ),
    )
    assert line["level"] == "warn" and line["namespace"] == "django.request"
    assert line["message"] == "Not Found: /a{b}"
    assert line["fields"] == {"status_code": 404}
    assert line["time"].endswith("Z")


def test_a_logged_exception_carries_its_traceback():
    def fail(log):
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            log.exception("Internal Server Error: %s", "/boom")

    [line] = forwarded("django.request", fail)
    assert line["level"] == "error" and line["message"] == "Internal Server Error: /boom"
    assert "ZeroDivisionError" in line["traceback"]


@pytest.mark.parametrize(
    ("level", "name"),
    [(logging.DEBUG, "debug"), (logging.INFO, "info"), (logging.CRITICAL, "critical")],
)
def test_logging_levels_become_twisted_levels(level, name):
    [line] = forwarded("django_adapter", lambda log: log.log(level, "x"))
    assert line["level"] == name


class Twistd(usage.Options):
    """twistd's own log options, as the plugin's options see them (``parent``)."""

    optFlags = [["nodaemon", "n", ""], ["syslog", None, ""]]
    optParameters = [["logfile", "l", None, ""], ["logger", None, None, ""]]


def twistd_options(*args):
    options = Twistd()
    options.parseOptions(list(args))
    return options


def test_json_goes_where_twistd_would_put_its_text(tmp_path):
    import sys

    assert twistd_log_file(twistd_options("-n")) is sys.stdout
    assert twistd_log_file(twistd_options("-n", "--logfile", "-")) is sys.stdout
    assert twistd_log_file(None) is sys.stdout  # runserverpush
    path = tmp_path / "push.log"
    target = twistd_log_file(twistd_options("-n", "--logfile", str(path)))
    assert isinstance(target, LogFile) and Path(target.path) == path


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--syslog"], "not syslog"),
        (["-n", "--logger", "x.y"], "--logger both choose"),
        (["--logfile", "-"], "a daemon cannot log to stdout"),
    ],
)
def test_json_where_it_cannot_go_is_a_usage_error(args, words):
    with pytest.raises(usage.UsageError, match=words):
        twistd_log_file(twistd_options(*args))


def test_a_bad_log_format_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        Options().parseOptions(["--log-format", "xml"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == "serverpush: error: --log-format must be one of text, json, got 'xml'\n"


def test_runserverpush_takes_log_format():
    from django_adapter.management.commands.runserverpush import command_arguments

    argv = command_arguments({"log-format": "json"})
    assert argv[-2:] == ["--log-format", "json"]
    options = Options()
    options.parseOptions(argv)
    assert options.log_file is not None


def read_lines(path: Path, until, timeout: float = 20) -> list[dict]:
    """The JSON lines in ``path`` once ``until(lines)`` holds (every line must parse)."""
    deadline = time.monotonic() + timeout
    lines: list[dict] = []
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        complete = text[: text.rfind("\n") + 1]
        lines = [json.loads(line) for line in complete.splitlines()]
        if until(lines):
            return lines
        time.sleep(0.05)
    raise AssertionError(f"timed out; lines so far: {lines}")


def run_json_server(tmp_path: Path, *twistd_args: str, stdout) -> tuple[subprocess.Popen, int]:
    port, notifier = free_port(), free_port()
    command = [
        twistd(), "--pidfile=", "-n", *twistd_args, "serverpush",
        "--port", f"tcp:{port}:interface=127.0.0.1",
        "--notifier", f"tcp:{notifier}",  # every interface, no key: a warning with fields
        "--log-format", "json",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=tmp_path, stdout=stdout, stderr=subprocess.PIPE)
    return process, port


def exercise(port: int, tmp_path: Path, log: Path, process: subprocess.Popen) -> list[dict]:
    """Wait for start-up, make one request, stop the server; the log's lines."""
    try:
        read_lines(log, lambda lines: any("starting on" in x["message"] for x in lines))
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health?key=not-for-logs").read()
        read_lines(log, lambda lines: any("/health" in x["message"] for x in lines))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    assert process.stderr is not None
    assert process.stderr.read() == b""
    return read_lines(log, lambda lines: any(x["message"] == "Server Shut Down." for x in lines))


@pytest.mark.integration
def test_real_twistd_writes_one_json_object_per_line_on_stdout(tmp_path):
    log = tmp_path / "stdout"
    with open(log, "wb") as out:
        process, port = run_json_server(tmp_path, stdout=out)
        lines = exercise(port, tmp_path, log, process)
    assert any(line["message"].startswith("twistd ") for line in lines)  # its own, too
    assert {line["level"] for line in lines} >= {"info", "warn"}
    [warning] = [line for line in lines if line["level"] == "warn"]
    assert "without --publisher-key" in warning["message"]
    assert warning["namespace"] == "twistedpush.tap"
    assert warning["fields"]["port"] > 0 and warning["fields"]["interface"] == "every interface"
    [access] = [line for line in lines if "/health" in line["message"]]
    assert "key=[hidden]" in access["message"] and "not-for-logs" not in access["message"]


@pytest.mark.integration
def test_runserverpush_writes_djangos_request_log_as_json_lines(tmp_path):
    """One port, --log-format json: Django's own records are JSON lines on stdout too."""
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "demo_site.settings",
        "PYTHONPATH": str(ROOT),
        "DEMO_DB": str(tmp_path / "db.sqlite3"),
        "DEMO_NOTIFIER_PORT": str(free_port()),
    }
    log = tmp_path / "stdout"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "runserverpush", "--allrequests",
             "--port", f"tcp:{port}:interface=127.0.0.1", "--log-format", "json"],
            cwd=ROOT / "demo_site", env=env, stdout=out, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            read_lines(log, lambda lines: any("starting on" in x["message"] for x in lines))
            with pytest.raises(urllib.error.HTTPError) as missing:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/no-such-page")
            assert missing.value.code == 404
            lines = read_lines(
                log, lambda lines: any(x["namespace"] == "django.request" for x in lines)
            )
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise AssertionError(  # noqa: B904 (what it logged says more than the wait)
                    "runserverpush did not stop on SIGTERM; it logged:\n" + log.read_text()[-4000:]
                )
    [request] = [line for line in lines if line["namespace"] == "django.request"]
    assert request["level"] == "warn" and request["message"] == "Not Found: /no-such-page"
    assert request["fields"]["status_code"] == 404


@pytest.mark.integration
def test_real_twistd_writes_json_to_its_logfile(tmp_path):
    log = tmp_path / "push.log"
    process, port = run_json_server(tmp_path, "--logfile", str(log), stdout=subprocess.PIPE)
    lines = exercise(port, tmp_path, log, process)
    assert process.stdout is not None and process.stdout.read() == b""
    assert any(line["message"] == "Server Shut Down." for line in lines)
