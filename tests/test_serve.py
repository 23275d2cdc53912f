"""The OpenAI-compatible server, driven by the official `openai` client (sync and async, streamed and not)
against a real uvicorn server on a loopback port. Outputs are compared with the model run directly:
greedy decoding by full recompute, log-softmax of a full forward, the tokenizer and chat template."""

import asyncio
import json
import sys
from pathlib import Path

import openai
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from serve_fixtures import ServerThread, make_model_dir  # noqa: E402

from gator.model import Transformer  # noqa: E402
from gator.serve import ServeConfig, create_app, load_served_models  # noqa: E402
from gator.tokenizer import Tokenizer, apply_chat_template, chat_stop_ids  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny chat model, a LoRA adapter on it, and a server for both (4 slots)."""
    from gator.interop.peft import save_adapter
    from gator.model.lora import LoRAConfig, apply_lora

    root = tmp_path_factory.mktemp("serve")
    model_dir = make_model_dir(root / "tiny")
    adapted = Transformer.from_pretrained(model_dir)
    apply_lora(adapted, LoRAConfig(r=4, alpha=8, targets=("q", "v", "down")))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained-looking adapter: B = 0 would change nothing
    save_adapter(adapted, root / "poet")
    models = load_served_models(model_dir, {"poet": root / "poet"}, name="tiny", n_slots=4, max_waiting=16)
    server = ServerThread(create_app(models, ServeConfig()))
    yield {"server": server, "dir": model_dir, "adapter": root / "poet", "models": models}
    server.stop()


@pytest.fixture(scope="module")
def reference(setup):
    """The served model, loaded on its own, and its tokenizer: what the server's outputs must match."""
    return Transformer.from_pretrained(setup["dir"]).eval(), Tokenizer.load(setup["dir"])


@pytest.fixture(scope="module")
def client(setup):
    return openai.OpenAI(base_url=setup["server"].url + "/v1", api_key="unused", max_retries=0)


@torch.no_grad()
def greedy(model, ids, n, stop=()):
    ids = list(ids)
    start = len(ids)
    for _ in range(n):
        t = int(model(torch.tensor([ids]))[0][0, -1].argmax())
        if t in stop:
            break
        ids.append(t)
    return ids[start:]


def eot(tok):
    return tok.special_ids["<|endoftext|>"]


def test_models_lists_the_base_and_its_adapter(client):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"tiny", "poet"}
    assert models["poet"].model_extra["parent"] == "tiny" and models["tiny"].owned_by == "gator"
    assert client.models.retrieve("poet").id == "poet"


def test_completion_is_the_greedy_continuation(client, reference):
    model, tok = reference
    prompt = "Hello gator"
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=0)
    ids = tok.encode_ordinary(prompt)
    expected = greedy(model, ids, 20, stop={eot(tok)})
    assert r.choices[0].text == tok.decode(expected)
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(expected)
    assert r.usage.total_tokens == len(ids) + len(expected)
    assert r.choices[0].finish_reason == ("length" if len(expected) == 20 else "stop")
    assert r.object == "text_completion" and r.model == "tiny"


def test_token_id_prompts_batches_and_n(client, reference):
    model, tok = reference
    prompts = [[5, 6, 7], [100, 101]]
    r = client.completions.create(model="tiny", prompt=prompts, max_tokens=6, temperature=0, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    for c in r.choices:
        assert c.text == tok.decode(greedy(model, prompts[c.index // 2], 6, stop={eot(tok)}))
    assert r.usage.prompt_tokens == 5


def test_chat_uses_the_template_and_stops_at_the_end_of_turn(client, reference):
    model, tok = reference
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <|im_end|> there"}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=15, temperature=0)
    ids = apply_chat_template(tok, messages)
    assert ids.count(tok.special_ids["<|im_end|>"]) == 2  # the user's "<|im_end|>" stayed ordinary text
    expected = greedy(model, ids, 15, stop=set(chat_stop_ids(tok)) | {eot(tok)})
    assert r.choices[0].message.content == tok.decode(expected)
    assert r.choices[0].message.role == "assistant" and r.object == "chat.completion"
    assert r.usage.prompt_tokens == len(ids)


def test_streamed_completion_equals_the_unstreamed_one(client):
    kw = dict(model="tiny", prompt="The quick", max_tokens=25, temperature=0)
    whole = client.completions.create(**kw)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_streamed_chat_starts_with_the_role_and_ends_with_done(setup, client):
    import httpx

    kw = dict(model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=12, temperature=0)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    raw = httpx.post(setup["server"].url + "/v1/chat/completions", json={**kw, "stream": True}, timeout=30)
    events = [line for line in raw.text.split("\n\n") if line]
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)


def test_concurrent_async_requests_each_get_what_they_would_alone(setup, reference):
    model, tok = reference
    prompts = ["Hello", "The quick brown fox jumps", "A gator", "Language models read tokens and", "hi", "sun"]
    lengths = [30, 5, 18, 11, 24, 9]

    async def run():
        client = openai.AsyncOpenAI(base_url=setup["server"].url + "/v1", api_key="unused", max_retries=0)

        async def one(prompt, n, stream):
            if not stream:
                r = await client.completions.create(model="tiny", prompt=prompt, max_tokens=n, temperature=0)
                return r.choices[0].text
            text = ""
            async for chunk in await client.completions.create(model="tiny", prompt=prompt, max_tokens=n,
                                                               temperature=0, stream=True):
                text += chunk.choices[0].text
            return text

        try:
            return await asyncio.gather(*(one(p, n, i % 2 == 0) for i, (p, n) in enumerate(zip(prompts, lengths))))
        finally:
            await client.close()

    texts = asyncio.run(run())  # 6 requests on 4 slots: some wait, all run interleaved
    for prompt, n, text in zip(prompts, lengths, texts):
        assert text == tok.decode(greedy(model, tok.encode_ordinary(prompt), n, stop={eot(tok)}))


@torch.no_grad()
def test_completion_logprobs_and_echo_equal_the_models_log_softmax(client, reference):
    model, tok = reference
    prompt = "A gator swims"
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0, logprobs=3, echo=True)
    ids = tok.encode_ordinary(prompt)
    generated = greedy(model, ids, 8, stop={eot(tok)})
    full = model(torch.tensor([ids + generated]))[0][0].float().log_softmax(-1)  # row t predicts token t+1
    choice = r.choices[0]
    lp = choice.logprobs
    all_ids = ids + generated
    assert choice.text == prompt + tok.decode(generated)
    assert lp.tokens == [tok.decode([i]) for i in all_ids] and lp.token_logprobs[0] is None
    for t in range(1, len(all_ids)):  # echoed prompt tokens, then the generated ones
        assert lp.token_logprobs[t] == pytest.approx(float(full[t - 1, all_ids[t]]), abs=1e-4)
        best = full[t - 1].topk(3).values.tolist()  # two alternatives may print alike and share a dict key
        assert max(lp.top_logprobs[t].values()) == pytest.approx(best[0], abs=1e-4)
        assert all(min(abs(v - b) for b in best) < 1e-4 for v in lp.top_logprobs[t].values())
    assert lp.text_offset[:2] == [0, len(tok.decode([ids[0]]))]


@torch.no_grad()
def test_chat_logprobs_of_sampled_tokens_equal_the_log_softmax_at_each_step(client, reference):
    model, tok = reference
    messages = [{"role": "user", "content": "Hello gator"}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=1.2, seed=11,
                                       logprobs=True, top_logprobs=4)
    ids = apply_chat_template(tok, messages)
    by_bytes = {bytes(tok.decode_bytes([i])): i for i in range(tok.vocab_size)}
    content = r.choices[0].logprobs.content
    assert content and len(content) == r.usage.completion_tokens
    for step in content:
        token = by_bytes[bytes(step.bytes)]
        row = model(torch.tensor([ids]))[0][0, -1].float().log_softmax(-1)
        assert step.logprob == pytest.approx(float(row[token]), abs=1e-4)
        assert [t.logprob for t in step.top_logprobs] == pytest.approx(row.topk(4).values.tolist(), abs=1e-4)
        ids.append(token)


def test_stop_strings_stop_token_ids_and_seeds(client, reference):
    model, tok = reference
    prompt = "Hello gator"
    expected = greedy(model, tok.encode_ordinary(prompt), 30, stop={eot(tok)})
    text = tok.decode(expected)
    stop = text[10:13]
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=30, temperature=0, stop=[stop, "\x00zz"])
    assert r.choices[0].text == text[:text.find(stop)] and r.choices[0].finish_reason == "stop"
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=30, temperature=0,
                                  extra_body={"stop_token_ids": [expected[3]]})
    assert r.choices[0].text == tok.decode(expected[:expected.index(expected[3])])
    a, b, c = (client.completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=1.0, seed=s,
                                         top_p=0.9, extra_body={"top_k": 50, "repetition_penalty": 1.1},
                                         presence_penalty=0.5, frequency_penalty=0.5).choices[0].text
               for s in (1, 1, 2))
    assert a == b != c


def test_tokenize_and_detokenize_use_ordinary_text(setup, reference):
    import httpx

    _, tok = reference
    url = setup["server"].url
    text = "Hello <|endoftext|> gator"
    r = httpx.post(url + "/tokenize", json={"prompt": text}).json()
    assert r["tokens"] == tok.encode_ordinary(text) and eot(tok) not in r["tokens"] and r["max_model_len"] == 128
    assert httpx.post(url + "/detokenize", json={"tokens": r["tokens"]}).json() == {"prompt": text}
    messages = [{"role": "user", "content": "Hi"}]
    assert httpx.post(url + "/tokenize", json={"messages": messages}).json()["tokens"] == apply_chat_template(
        tok, messages)


def test_lora_adapter_is_selected_by_the_model_field(setup, client, reference):
    from gator.interop.peft import load_adapter

    base, tok = reference
    adapted = load_adapter(Transformer.from_pretrained(setup["dir"]), setup["adapter"]).eval()
    ids = tok.encode_ordinary("Hello gator")
    r = client.completions.create(model="poet", prompt="Hello gator", max_tokens=15, temperature=0)
    assert r.choices[0].text == tok.decode(greedy(adapted, ids, 15, stop={eot(tok)}))
    assert r.choices[0].text != tok.decode(greedy(base, ids, 15, stop={eot(tok)}))
    served_base = setup["models"][0].engine.model  # the adapter shares the base weights, unmerged
    for name, p in base.state_dict().items():
        assert torch.equal(served_base.state_dict()[name], p), name


def test_health_and_metrics(setup, client):
    import httpx

    url = setup["server"].url
    client.completions.create(model="tiny", prompt="hi", max_tokens=3, extra_body={"ignore_eos": True})
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["models"] == ["tiny", "poet"]
    text = httpx.get(url + "/metrics").text
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {"gator_requests", "gator_prompt_tokens", "gator_generation_tokens", "gator_queue_length",
            "gator_running_requests", "gator_generation_tokens_per_second",
            "gator_time_to_first_token_seconds"} <= set(families)
    generated = {s.labels["model"]: s.value for s in families["gator_generation_tokens"].samples
                 if s.name == "gator_generation_tokens_total"}
    assert generated["tiny"] >= 3
    ok = [s for s in families["gator_requests"].samples
          if s.labels.get("endpoint") == "/v1/completions" and s.labels.get("status") == "200"]
    assert ok and ok[0].value >= 1


def test_json_body_shapes(setup):
    import httpx

    r = httpx.post(setup["server"].url + "/v1/completions",
                   json={"model": "tiny", "prompt": "x", "max_tokens": 2, "logprobs": 1})
    body = r.json()
    assert r.status_code == 200 and set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert set(body["choices"][0]["logprobs"]) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert json.loads(json.dumps(body)) == body
