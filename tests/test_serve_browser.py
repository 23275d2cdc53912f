"""The chat page in a real browser: Playwright driving Debian's chromium (installed by `make test`'s install
step). A message typed into the page streams back the same reply the OpenAI client gets for the same
conversation; the stop button, the model picker and error display work; a screenshot is saved to
build/screenshots/chat-page.png."""

import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from serve_fixtures import ServerThread, make_model_dir  # noqa: E402

from gator.serve import ServeConfig, create_app, load_served_models  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path(__file__).resolve().parents[1] / "build" / "screenshots" / "chat-page.png"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from gator.interop.peft import save_adapter
    from gator.model import Transformer
    from gator.model.lora import LoRAConfig, apply_lora

    root = tmp_path_factory.mktemp("page")
    model_dir = make_model_dir(root / "tiny", context_length=2048, never_stop=True)
    adapted = apply_lora(Transformer.from_pretrained(model_dir), LoRAConfig(r=2, alpha=4, targets=("q", "v")))
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    save_adapter(adapted, root / "poet")
    models = load_served_models(model_dir, {"poet": root / "poet"}, name="tiny", n_slots=2)
    s = ServerThread(create_app(models, ServeConfig()))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail("chromium is not installed at /usr/bin/chromium: run `make test` (its install step runs "
                    "`apt-get install -y chromium`) or install it by hand")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        page.goto(server.url + "/")
        page.wait_for_function("document.querySelectorAll('#model option').length === 2")
        yield page
        browser.close()


def send(page, text, temperature="0", max_tokens="20", model="tiny"):
    page.select_option("#model", model)
    page.fill("#temperature", temperature)
    page.fill("#max-tokens", max_tokens)
    page.fill("#input", text)
    page.click("#send")


def last_reply(page):
    bubble = page.locator(".msg.assistant").last
    return bubble.locator(".text").text_content(), bubble.get_attribute("data-finish")


def wait_finished(page, count):
    page.wait_for_function(f"document.querySelectorAll('.msg.assistant[data-finish]').length === {count}")


def test_a_message_streams_back_the_reply_the_api_gives(server, page):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    page.click("#new-chat")
    send(page, "Hello gator")
    wait_finished(page, 1)
    reply, finish = last_reply(page)
    messages = [{"role": "user", "content": "Hello gator"}]
    api = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0)
    assert reply == api.choices[0].message.content and reply
    assert finish == "length"
    send(page, "And then?")  # the second turn sends the whole conversation
    wait_finished(page, 2)
    messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "And then?"}]
    api = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0)
    assert last_reply(page)[0] == api.choices[0].message.content
    assert page.locator(".msg.user").count() == 2
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000


def test_the_model_picker_selects_the_adapter(server, page):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    page.click("#new-chat")
    assert page.locator("#model option").all_text_contents() == ["tiny", "poet (adapter on tiny)"]
    send(page, "Hi", model="poet", max_tokens="10")
    wait_finished(page, 1)
    api = client.chat.completions.create(model="poet", messages=[{"role": "user", "content": "Hi"}], max_tokens=10,
                                         temperature=0)
    assert last_reply(page)[0] == api.choices[0].message.content


def test_the_stop_button_ends_the_reply_and_frees_the_slot(server, page):
    page.click("#new-chat")
    send(page, "Tell me everything", max_tokens="1900")
    page.wait_for_function("document.querySelector('.msg.assistant .text').textContent.length > 3")
    bubble = page.locator(".msg.assistant").last
    # text is on screen while the answer is still being written: it streams
    assert "streaming" in bubble.get_attribute("class") and bubble.get_attribute("data-finish") is None
    page.click("#stop")
    wait_finished(page, 1)
    reply, finish = last_reply(page)
    assert finish == "stopped" and reply
    deadline = time.monotonic() + 5
    while httpx.get(server.url + "/health").json()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(server.url + "/health").json()["running"] == 0
    assert not page.is_disabled("#send") and page.is_disabled("#stop")


def test_errors_are_shown_to_the_user(server, page):
    page.click("#new-chat")
    send(page, "Hello", max_tokens="99999")
    page.wait_for_selector("#error:not([hidden])")
    assert "maximum context length is 2048 tokens" in page.text_content("#error")
    assert page.locator(".msg").count() == 0 and page.input_value("#input") == "Hello"  # the turn can be resent
