"""What the server does with bad, hostile and impatient clients (raw HTTP, as curl would send it): OpenAI-shaped
400/401/404/405/413/429 errors naming the problem, a full queue refused at once, a client that disconnects
freeing its slot at once, and a server that keeps answering afterwards. Also the `gator serve` command."""

import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_fixtures import ServerThread, make_model_dir  # noqa: E402

from gator.serve import ServeConfig, create_app, load_served_models  # noqa: E402

CONTEXT = 2048  # long enough that a 2000-token answer takes a while: time to disconnect or to queue behind it


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One slot, a queue of one, a 4 KiB body limit: every limit is easy to reach."""
    model_dir = make_model_dir(tmp_path_factory.mktemp("long") / "long", context_length=CONTEXT)
    models = load_served_models(model_dir, name="long", n_slots=1, max_waiting=1)
    s = ServerThread(create_app(models, ServeConfig(max_body_bytes=4096)))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """A base model without a chat template, behind an API key."""
    model_dir = make_model_dir(tmp_path_factory.mktemp("base") / "base", chat=False)
    s = ServerThread(create_app(load_served_models(model_dir, name="base", n_slots=2), ServeConfig(api_key="s3cret")))
    yield s
    s.stop()


def health(url):
    return httpx.get(url + "/health").json()


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def generated_total(url):
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("gator_generation_tokens_total{"):
            return float(line.split()[-1])
    raise AssertionError("no gator_generation_tokens_total in /metrics")


OK = {"model": "long", "prompt": "hello", "max_tokens": 3, "ignore_eos": True}
LONG = {"model": "long", "prompt": "hello", "max_tokens": 2000, "ignore_eos": True}  # holds the slot a while
BAD = [  # (body, status, param or None, words the message must contain)
    (b"{bad", 400, None, "not valid JSON"),
    (b"", 400, None, "not valid JSON"),
    (b"\xff\xfe\x00garbage", 400, None, "not valid JSON"),
    (b"[" * 3000 + b"]" * 3000, 413, None, "larger than"),
    (b"[" * 1000 + b"]" * 1000, 400, None, ""),
    (b"[]", 400, None, "JSON object"),
    ({"model": "long"}, 400, "prompt", "required"),
    ({**OK, "temperature": "hot"}, 400, "temperature", "number"),
    ({**OK, "temperature": 5}, 400, "temperature", "2"),
    (b'{"model": "long", "prompt": "x", "temperature": NaN}', 400, "temperature", ""),
    ({**OK, "top_p": 0}, 400, "top_p", "greater than 0"),
    ({**OK, "n": 0}, 400, "n", ""),
    ({**OK, "n": 4}, 400, "n", "at most 1 completions at once"),
    ({**OK, "max_tokens": 0}, 400, "max_tokens", ""),
    ({**OK, "max_tokens": True}, 400, "max_tokens", "integer"),
    ({**OK, "max_tokens": 10**30}, 400, "max_tokens", ""),
    ({**OK, "max_tokens": 5000}, 400, "max_tokens", f"maximum context length is {CONTEXT} tokens"),
    ({**OK, "logprobs": 50}, 400, "logprobs", "20"),
    ({**OK, "prompt": []}, 400, "prompt", "list of token ids"),
    ({**OK, "prompt": [1, "a"]}, 400, "prompt", ""),
    ({**OK, "prompt": [99999]}, 400, "prompt", "outside the vocabulary"),
    ({**OK, "prompt": None}, 400, "prompt", ""),
    ({**OK, "stop": [""]}, 400, "stop", "non-empty"),
    ({**OK, "stop": ["x"] * 17}, 400, "stop", "at most 16"),
    ({**OK, "stop_token_ids": [-1]}, 400, "stop_token_ids", "outside the vocabulary"),
    ({**OK, "stream": "yes"}, 400, "stream", "boolean"),
    ({**OK, "stream": True, "stream_options": {"include_usage": "yes"}}, 400, "stream_options.include_usage", ""),
    ({**OK, "logit_bias": {"5": 10}}, 400, "logit_bias", "not supported"),
    ({**OK, "presence_penalty": -3}, 400, "presence_penalty", ""),
    ({**OK, "model": "gpt-4"}, 404, "model", "does not exist"),
]


@pytest.mark.parametrize("body,status,param,words", BAD, ids=[f"case{i}" for i in range(len(BAD))])
def test_bad_completion_requests_get_openai_errors(server, body, status, param, words):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(server.url + "/v1/completions", headers={"Content-Type": "application/json"}, timeout=30, **kw)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert words in error["message"]


@pytest.mark.parametrize("body,param,words", [
    ({"model": "long", "messages": []}, "messages", "at least 1"),
    ({"model": "long", "messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role", ""),
    ({"model": "long", "messages": [{"role": "user"}]}, "messages.0.content", "required"),
    ({"model": "long", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, "top_logprobs",
     "logprobs=true"),
    ({"model": "long", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 99999},
     "max_tokens", "maximum context length"),
])
def test_bad_chat_requests_get_openai_errors(server, body, param, words):
    r = httpx.post(server.url + "/v1/chat/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param and words in r.json()["error"]["message"]


def test_unknown_routes_methods_and_large_bodies(server):
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(server.url + "/v1/completions")
    assert r.status_code == 405 and "no route GET" in r.json()["error"]["message"]
    big = {**OK, "prompt": "x" * 5000}
    r = httpx.post(server.url + "/v1/completions", json=big)
    assert r.status_code == 413 and "4096 bytes" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(10):
            yield b" " * 1000

    r = httpx.post(server.url + "/v1/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    r = httpx.post(server.url + "/v1/completions", json=OK)  # and the server still works
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


def test_a_full_queue_answers_429_at_once_and_a_disconnect_frees_the_slot(server):
    url = server.url
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    before = generated_total(url)
    first = client.completions.create(model="long", prompt="hello", max_tokens=2000, stream=True,
                                      extra_body={"ignore_eos": True})
    next(iter(first))  # it holds the only slot now
    waiting = {}
    thread = threading.Thread(target=lambda: waiting.update(r=httpx.post(url + "/v1/completions", json=OK,
                                                                            timeout=60)))
    thread.start()
    assert wait_for(lambda: health(url)["waiting"] == 1)
    t0 = time.monotonic()
    with pytest.raises(openai.RateLimitError) as info:
        client.completions.create(model="long", prompt="hi", max_tokens=3)
    assert time.monotonic() - t0 < 5  # refused at once, not left to time out
    assert "1 requests are already waiting" in info.value.body["message"]
    first.close()  # the client goes away mid-stream ...
    thread.join(timeout=60)  # ... so the waiting request gets the slot and completes
    assert waiting["r"].status_code == 200 and waiting["r"].json()["usage"]["completion_tokens"] == 3
    assert wait_for(lambda: health(url)["running"] == 0)
    assert generated_total(url) - before < 1500  # the abandoned 2000-token answer was not finished


def test_a_disconnected_non_streaming_client_frees_its_slot(server):
    url = server.url
    before = generated_total(url)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/completions", json=LONG, timeout=0.5)
    assert wait_for(lambda: health(url)["running"] == 0, timeout=5)
    assert generated_total(url) - before < 1900
    assert httpx.post(url + "/v1/completions", json=OK).status_code == 200


def test_api_key_is_required_when_set(keyed):
    bad = openai.OpenAI(base_url=keyed.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert httpx.get(keyed.url + "/v1/models").status_code == 401
    r = httpx.post(keyed.url + "/v1/completions", json={"model": "base", "prompt": "x"},
                   headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(keyed.url + "/metrics").status_code == 401
    assert httpx.get(keyed.url + "/health").status_code == 200  # liveness and the page stay open
    assert httpx.get(keyed.url + "/").status_code == 200
    good = openai.OpenAI(base_url=keyed.url + "/v1", api_key="s3cret", max_retries=0)
    r = good.completions.create(model="base", prompt="hi", max_tokens=2, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 2


def test_chat_on_a_model_without_a_template_is_a_400_that_says_so(keyed):
    client = openai.OpenAI(base_url=keyed.url + "/v1", api_key="s3cret", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["code"] == "no_chat_template" and "no chat template" in info.value.body["message"]


def test_cli_serve_binds_loopback_reads_the_key_from_the_environment_and_warns(tmp_path, monkeypatch, capsys):
    import uvicorn
    from fastapi.testclient import TestClient

    from gator.cli import main

    model_dir = make_model_dir(tmp_path / "m")
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    monkeypatch.setenv("GATOR_API_KEY", "from-env")
    assert main(["serve", str(model_dir), "--port", "8123", "--lora", "x=" + str(tmp_path / "missing")]) == 1
    assert "missing" in capsys.readouterr().err
    assert main(["serve", str(model_dir), "--port", "8123"]) == 0
    app, kw = calls[-1]
    assert kw["host"] == "127.0.0.1" and kw["port"] == 8123 and "warning" not in capsys.readouterr().err
    assert TestClient(app).get("/v1/models").status_code == 401
    assert TestClient(app).get("/v1/models", headers={"Authorization": "Bearer from-env"}).status_code == 200
    monkeypatch.delenv("GATOR_API_KEY")
    assert main(["serve", str(model_dir), "--host", "0.0.0.0"]) == 0
    assert "warning: serving on 0.0.0.0 without an API key" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "nowhere")]) == 1
    assert main(["serve", str(model_dir), "--lora", "no-equals-sign"]) == 1
    assert "--lora takes NAME=DIR" in capsys.readouterr().err
