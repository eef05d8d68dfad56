"""The web page in a real browser (Debian's Chromium driven by Playwright) against a live server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from serve_helpers import ASPIRIN

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture()
def page():
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser.new_page(viewport={"width": 1200, "height": 800})
        finally:
            browser.close()


def test_depict_ask_and_stream(page, live_server, tmp_path):
    remote = []  # anything not from our server (blob: URLs are the page's own in-memory depictions)
    page.on("request", lambda r: remote.append(r.url) if not r.url.startswith((live_server.url, "blob:")) else None)
    chat_requests = []
    page.on("request", lambda r: chat_requests.append(r) if r.url.endswith("/v1/chat/completions") else None)
    page.goto(live_server.url)
    page.wait_for_selector("#api-key-row:not([hidden])")  # the server requires a key: the page asks for it
    page.fill("#api-key", live_server.api_key)
    page.fill("#temperature", "1")

    page.fill("#smiles", "C1CC")
    page.wait_for_selector('#depiction[data-state="error"]')
    assert "invalid SMILES" in page.text_content("#depiction-message")
    page.fill("#smiles", "")
    page.type("#smiles", ASPIRIN, delay=5)
    page.wait_for_selector('#depiction[data-state="ok"]')
    page.wait_for_function("document.getElementById('depiction-image').naturalWidth > 0")

    page.fill("#question", "What is this molecule used for?")
    page.click("#send")
    page.wait_for_selector('.message.assistant[data-state="done"]', timeout=30_000)
    answer = page.text_content(".message.assistant .body")
    assert answer and answer.strip()
    assert "aspirin" in page.text_content("#evidence")  # the nearest known molecule, from the server's index
    user_turn = page.text_content(".message.user .body")
    assert "What is this molecule used for?" in user_turn and ASPIRIN in user_turn

    body = json.loads(chat_requests[0].post_data)
    assert body["stream"] is True
    assert {"type": "molecule", "smiles": ASPIRIN} in body["messages"][0]["content"]
    assert chat_requests[0].response().headers["content-type"].startswith("text/event-stream")
    assert remote == [], f"the page fetched something that is not on our server: {remote}"

    shot = Path(os.environ.get("BIOMEDGPT_TEST_ARTIFACTS", tmp_path)) / "serve-page.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_follow_up_keeps_the_conversation(page, live_server):
    page.goto(live_server.url)
    page.wait_for_selector("#api-key-row:not([hidden])")
    page.fill("#api-key", live_server.api_key)
    page.fill("#max-tokens", "4")
    for question in ("first question", "second question"):
        page.fill("#question", question)
        page.press("#question", "Enter")
        page.wait_for_function(f"document.querySelectorAll('.message.assistant[data-state=\"done\"]').length >= "
                               f"{1 if question.startswith('first') else 2}", timeout=30_000)
    assert page.locator(".message.user").count() == 2 and page.locator(".message.error").count() == 0
    page.click("#clear")
    assert page.locator(".message").count() == 0
