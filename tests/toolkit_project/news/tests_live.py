from playwright.sync_api import expect, sync_playwright

from django_adapter.testing import LivePushServerTestCase


class LiveHeadlinesTests(LivePushServerTestCase):
    def test_a_new_headline_reaches_an_open_page(self):
        with sync_playwright() as p:
            browser = p.chromium.launch(**CHROMIUM)
            reader, writer = browser.new_page(), browser.new_page()
            reader.goto(f"{self.live_server_url}/news/")
            expect(reader.locator("#state")).to_have_text("websocket")  # live
            writer.goto(f"{self.live_server_url}/news/write/")
            writer.get_by_label("Title").fill("Hello")
            writer.get_by_role("button", name="Publish").click()
            expect(reader.locator("#headline")).to_have_text("Hello")
            browser.close()


CHROMIUM = {"executable_path": "/usr/bin/chromium", "args": ["--no-sandbox", "--disable-gpu"]}
"""Debian's chromium, as CI has it (docs/django.md shows ``p.chromium.launch()``)."""
