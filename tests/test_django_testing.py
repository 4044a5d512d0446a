"""django_adapter.testing: capture_updates(), SERVERPUSH_ENABLED = False, and the
pytest fixtures through the installed ``pytest11`` entry point. The live push
server is tested by tests/toolkit_project (run here in a subprocess): it runs
Twisted's global reactor, which tests/conftest.py's reactor_thread also runs."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from demo.models import Counter, Score
from django.contrib.auth.models import AnonymousUser, User
from django.db import connections, transaction
from django.test import TestCase, TransactionTestCase, override_settings

from django_adapter import current_timestamp, history, presence, send_update, send_updates
from django_adapter.client import PushServerUnavailable
from django_adapter.testing import PushedUpdate, capture_updates
from tests.conftest import ROOT, free_port
from twistedpush.errors import BadChannel, BadData

TOOLKIT = ROOT / "tests" / "toolkit_project"
DOC = ROOT / "docs" / "django.md"
WHEN = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC)


def no_server():
    """Settings whose notifier port nothing listens on: a contact would fail and log."""
    return override_settings(SERVERPUSH_NOTIFIER_PORT=free_port(), SERVERPUSH_TIMEOUT=0.5)


class CaptureInTestCase(TestCase):
    """In a TestCase: its own transaction stands for a committed one."""

    def setUp(self):
        self.enterContext(no_server())
        self.enterContext(self.assertNoLogs("django_adapter"))

    def test_send_update_is_recorded_at_once_decoded_with_a_position(self):
        with capture_updates() as updates:
            ts = send_update("news.headlines", {"when": WHEN, "n": 1}, name="headline")
            assert updates == [
                PushedUpdate("news.headlines", {"when": "2024-05-01T12:00:00Z", "n": 1}, "headline")
            ]
            second = send_updates([("room:1", {"text": "hi"}, "chat"), ("room:2", [1])])
        assert isinstance(ts, int) and second[0] > ts and second[1] > second[0]
        assert [(u.channel, u.data, u.name, u.user) for u in updates[1:]] == [
            ("room:1", {"text": "hi"}, "chat", None),
            ("room:2", [1], None, None),
        ]

    def test_on_commit_publications_are_recorded_when_the_block_ends(self):
        with capture_updates() as updates:
            with transaction.atomic():
                assert send_update("news.a", {"n": 1}) is None  # waits for a commit
            transaction.on_commit(lambda: send_update("news.a", {"n": 2}))  # your own hook
            assert updates == []  # the test's transaction never commits...
        assert [u.data for u in updates] == [{"n": 1}, {"n": 2}]  # ...so the block's end runs them

    def test_a_rolled_back_block_publishes_nothing(self):
        with capture_updates() as updates:
            with pytest.raises(ValueError), transaction.atomic():
                send_update("news.a", {"n": 1})
                raise ValueError("rolled back")
        assert updates == []

    def test_nested_blocks_both_record_and_callbacks_run_once(self):
        calls = []
        with capture_updates() as outer:
            with capture_updates() as inner:
                with transaction.atomic():
                    send_update("news.a", {"n": 1})
                    transaction.on_commit(lambda: calls.append(1))
            assert len(inner) == len(outer) == 1
        assert len(outer) == 1 and calls == [1]

    def test_a_django_without_the_private_markers_waits_for_the_block_end(self):
        """Without ``Atomic._from_testcase`` or ``connection.atomic_blocks`` (private,
        may go), the test's transaction is taken for the project's own: no crash."""
        connection = connections["default"]
        blocks = connection.atomic_blocks
        marks = [block.__dict__.pop("_from_testcase") for block in blocks]
        try:
            with capture_updates() as updates:
                send_update("news.a", {"n": 1})
                del connection.atomic_blocks
                try:
                    send_update("news.a", {"n": 2})
                finally:
                    connection.atomic_blocks = blocks
                assert updates == []  # as if inside an atomic() block of the project's
        finally:
            for block, mark in zip(blocks, marks, strict=True):
                block._from_testcase = mark
        assert [u.data for u in updates] == [{"n": 1}, {"n": 2}]

    def test_other_threads_publications_are_recorded_too(self):
        with capture_updates() as updates:
            thread = threading.Thread(target=send_update, args=("news.t", {"n": 1}))
            thread.start()
            thread.join(10)
        assert [(u.channel, u.data) for u in updates] == [("news.t", {"n": 1})]

    def test_view_update_records_carry_the_user_they_were_serialized_for(self):
        alice = User.objects.get_or_create(username="alice")[0]
        bob = User.objects.get_or_create(username="bob")[0]
        with override_settings(SERVERPUSH_ENABLED=False):  # pages take positions
            for user in (alice, bob):
                self.client.force_login(user)
                assert self.client.get("/me/").status_code == 200  # registers the page group
            self.client.get("/")  # bob's counter page
            self.client.logout()
            self.client.get("/")  # an anonymous visitor's counter page
        with capture_updates() as updates:
            Score.objects.filter(user=bob).update(points=6)  # no signal: nothing
            self.client.force_login(alice)
            self.client.post("/me/bump/")  # the view's own atomic block
        [score] = [u for u in updates if u.name == "score"]
        assert (score.data, score.user) == ({"points": 1, "for": "alice"}, alice)
        assert score.channel.startswith("sp.score.")
        with capture_updates() as updates:
            counter = Counter.objects.get(pk=1)
            counter.save()  # outside any atomic block of ours: recorded at once
            by_user = {u.user.username: u for u in updates}
        assert set(by_user) == {"bob", ""}
        assert isinstance(by_user[""].user, AnonymousUser) and by_user["bob"].user == bob
        assert by_user[""].data == by_user["bob"].data == {"value": counter.value}
        assert by_user[""].channel != by_user["bob"].channel


class CaptureInTransactionTestCase(TransactionTestCase):
    """Without a test transaction, publications are recorded as they commit."""

    def setUp(self):
        self.enterContext(no_server())
        self.enterContext(self.assertNoLogs("django_adapter"))

    def test_publications_are_recorded_on_commit(self):
        alice = User.objects.get_or_create(username="alice")[0]
        self.client.force_login(alice)
        with override_settings(SERVERPUSH_ENABLED=False):
            self.client.get("/me/")
        with capture_updates() as updates:
            with transaction.atomic():
                send_update("news.a", {"n": 1})
                score = Score.objects.get(user=alice)
                score.points = 3
                score.save()
                assert updates == []
            assert [(u.name, u.data, u.user) for u in updates] == [
                (None, {"n": 1}, None),
                ("score", {"points": 3, "for": "alice"}, alice),
            ]
            assert isinstance(send_update("news.a", {"n": 2}), int)
        assert len(updates) == 3


class Listener:
    """A real listening socket that counts the connections made to it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def contacts(self):
        """Connections made so far (the kernel completes a connect before accept)."""
        count = 0
        while True:
            try:
                connection, _ = self.sock.accept()
            except BlockingIOError:
                return count
            connection.close()
            count += 1


class ListeningInsteadOfAServer:
    """A Listener where the notifier port is: a probe of every contact."""

    def setUp(self):
        self.listener = Listener()
        self.addCleanup(self.listener.sock.close)
        self.enterContext(
            override_settings(SERVERPUSH_NOTIFIER_PORT=self.listener.port, SERVERPUSH_TIMEOUT=0.3)
        )


class Disabled(ListeningInsteadOfAServer, TransactionTestCase):
    """SERVERPUSH_ENABLED = False: no socket to the push server, nothing logged."""

    def test_nothing_contacts_the_push_server_and_pages_get_local_positions(self):
        alice = User.objects.get_or_create(username="alice")[0]
        with override_settings(SERVERPUSH_ENABLED=False), self.assertNoLogs("django_adapter"):
            first = send_update("news.a", {"n": 1})
            with transaction.atomic():
                send_updates([("news.a", {"n": 2})])
            self.client.force_login(alice)
            page = self.client.get("/me/").content.decode()  # <view>_update: position first
            score = Score.objects.get(user=alice)
            score.points = 5
            score.save()  # the page group's update, after commit: dropped
            later = current_timestamp()
        position = int(re.search(r'id="generated_timestamp"[^>]*>(\d+)<', page)[1])
        assert 0 < first < position < later
        assert abs(position / 1e6 - datetime.datetime.now().timestamp()) < 60  # this clock's µs
        assert self.listener.contacts() == 0

    def test_the_probe_sees_a_contact_when_enabled(self):
        """The check above can fail: enabled, the same calls reach the listener."""
        with self.assertLogs("django_adapter", "WARNING"), pytest.raises(PushServerUnavailable):
            current_timestamp()
        assert self.listener.contacts() == 1


class CaptureAloneInTestCase(ListeningInsteadOfAServer, TestCase):
    """capture_updates() with SERVERPUSH_ENABLED left True: pages render as under
    ENABLED = False, without a contact with the push server or a log record."""

    def test_pages_and_queries_answer_locally_while_capturing(self):
        with self.assertNoLogs("django_adapter"), capture_updates() as updates:
            ts = send_update("demo.chat", {"text": "hi"}, name="chat_message")
            page = self.client.get("/chat/").content.decode()  # position, viewer count
            assert (presence("demo.chat"), history("demo.chat")) == (0, ([], 0))
            later = current_timestamp()
        assert updates == [PushedUpdate("demo.chat", {"text": "hi"}, "chat_message")]
        position = int(re.search(r'id="generated_timestamp"[^>]*>(\d+)<', page)[1])
        assert 0 < ts < position < later
        assert re.search(r'id="viewers-count">1<', page)  # itself, counted locally
        assert self.listener.contacts() == 0

    def test_queries_answered_locally_still_check_their_arguments(self):
        with capture_updates(), override_settings(SERVERPUSH_ENABLED=False):
            assert history("demo.chat", limit=None) == ([], 0)
            with pytest.raises(BadChannel):
                presence("demo chat")
            with pytest.raises(BadData, match="since"):
                history("demo.chat", since=-1)
        assert self.listener.contacts() == 0


# The pytest fixtures, as another project gets them


def run_pytest(project: Path, *args: str) -> subprocess.CompletedProcess:
    """pytest in ``project``, as its own (pytest-django put this run's settings in the
    environment, which would win over the project's)."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_the_entry_point_is_installed():
    entries = [
        e for e in importlib.metadata.entry_points(group="pytest11") if e.name == "twistedpush"
    ]
    assert len(entries) == 1, "reinstall: pip install -e . (pyproject.toml's entry points)"
    [entry] = entries
    assert entry.value == "django_adapter.pytest_plugin"
    assert entry.dist.name == "twistedpush"


@pytest.mark.integration
def test_pushed_updates_fixture_in_a_project_without_a_conftest(tmp_path):
    shutil.copytree(
        ROOT / "demo_site", tmp_path / "site", ignore=shutil.ignore_patterns("*.sqlite3")
    )
    (tmp_path / "site" / "pytest.ini").write_text(
        "[pytest]\nDJANGO_SETTINGS_MODULE = demo_site.settings\npythonpath = .\n"
    )
    (tmp_path / "site" / "test_fixture.py").write_text(
        textwrap.dedent(
            """
            import pytest
            from demo.models import Counter
            from django_adapter import send_update


            @pytest.mark.django_db
            def test_recorded(pushed_updates, client):
                client.get("/")  # the counter page registers its group
                send_update("demo.news", {"n": 1}, name="headline")
                counter = Counter.objects.get(pk=1)
                counter.value = 5
                counter.save()  # the group's update, recorded at once
                assert [(u.channel, u.data, u.name) for u in pushed_updates] == [
                    ("demo.news", {"n": 1}, "headline"),
                    (pushed_updates[1].channel, {"value": 5}, "counter"),
                ]
            """
        )
    )
    result = run_pytest(tmp_path / "site", "-W", "error::pytest.PytestUnraisableExceptionWarning")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


@pytest.mark.integration
def test_the_plugin_does_not_disturb_projects_without_django_settings(tmp_path):
    (tmp_path / "test_plain.py").write_text("def test_plain():\n    assert True\n")
    for args in ((), ("-p", "no:django")):
        result = run_pytest(tmp_path, *args, "--fixtures")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "pushed_updates" in result.stdout and "live_push_server" in result.stdout
        result = run_pytest(tmp_path, *args)
        assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout
        assert "warning" not in result.stdout.lower()


# The docs' examples: a small project's own tests, run as docs/django.md shows them

MARKED = re.compile(r"<!-- testing: (?P<file>[\w/.]+) -->\n```\w*\n(?P<body>.*?)\n```", re.S)


def docs_testing_section() -> str:
    text = DOC.read_text()
    return text[text.index("\n## Testing\n") : text.index("\n## Settings\n")]


def test_every_example_in_the_testing_section_is_in_the_project_as_written():
    """The one change: CI launches Debian's chromium (``launch(**CHROMIUM)``)."""
    section = docs_testing_section()
    blocks = list(MARKED.finditer(section))
    assert len(blocks) == section.count("```python") == 6
    for block in blocks:
        source = (TOOLKIT / block["file"]).read_text()
        source = source.replace("p.chromium.launch(**CHROMIUM)", "p.chromium.launch()")
        assert block["body"] in source, f"{block['file']} lacks the docs' example:\n{block['body']}"


@pytest.fixture
def toolkit(tmp_path):
    """The project, copied: its runs write their database and caches there."""
    if not Path("/usr/bin/chromium").exists():
        pytest.fail("Debian chromium is not installed (apt-get install -y chromium)")
    target = tmp_path / "toolkit_project"
    shutil.copytree(TOOLKIT, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


@pytest.mark.integration
@pytest.mark.browser
def test_the_projects_django_tests_pass(toolkit):
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run(
        [sys.executable, "manage.py", "test", "--noinput", "-v", "2"],
        cwd=toolkit, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for test in ("test_publishing_pushes_the_headline", "test_a_new_headline_reaches_an_open_page"):
        # The live server may log a line (a browser's broken pipe) before "ok".
        assert re.search(rf"^{test} \(.*\) \.\.\. (.*\n)?ok$", result.stderr, re.M), result.stderr
    assert "Ran 3 tests" in result.stderr and "\nOK" in result.stderr


@pytest.mark.integration
def test_the_projects_pytest_tests_pass(toolkit):
    result = run_pytest(toolkit, "-v", "-W", "error")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
