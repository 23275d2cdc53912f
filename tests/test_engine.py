"""The batching engine and its slot cache, against references computed without them: greedy decoding by
full recompute (no cache at all), the static generate() for seeded sampling, log-softmax of a full
forward for log-probabilities, and the OpenAI penalty formula applied by hand."""

import threading

import pytest
import torch

from gator.config import get_preset
from gator.generate import SamplingParams, generate
from gator.generate.engine import Engine, QueueFullError, Request, generate_batched
from gator.model import Transformer
from gator.model.slot_cache import SlotCache


def make(preset="tiny-gatorgpt", **overrides):
    torch.manual_seed(0)
    # A larger init spread makes a random model's greedy output varied rather than one repeated token.
    return Transformer(get_preset(preset, init_std=0.3, **overrides)).eval()


@pytest.fixture(scope="module")
def model():
    return make()


@torch.no_grad()
def full_logits(model, ids):
    """Logits (T, V) of one sequence by a full forward: no cache involved."""
    return model(torch.tensor([ids]))[0][0]


def greedy_reference(model, prompt, n, stop=()):
    ids = list(prompt)
    for _ in range(n):
        t = int(full_logits(model, ids)[-1].argmax())
        if t in stop:
            break
        ids.append(t)
    return ids[len(prompt):]


def tokens_of(handle):
    return [ev.token for ev in handle if ev.token is not None]


@pytest.mark.parametrize("preset,overrides", [("tiny-gatorgpt", {}), ("tiny-gpt2", {}), ("deepseek-tiny", {}),
                                              ("tiny-gatorgpt", {"sliding_window": 5})])
def test_slot_cache_rows_at_different_lengths_decode_like_full_recompute(preset, overrides):
    model = make(preset, **overrides)
    cache = SlotCache.for_model(model, n_slots=4)
    prompts = {0: [1, 2, 3, 4, 5, 6, 7], 2: [8, 9], 3: [10, 11, 12, 13]}  # slot 1 stays free
    out = {}
    with torch.no_grad():
        for slot, p in prompts.items():
            logits, _ = model(torch.tensor([p]), cache=cache.view(slot, slot + 1), last_only=True)
            out[slot] = [int(logits[0, -1].argmax())]
        for _ in range(12):
            ids = torch.tensor([[out[s][-1]] if s in out else [0] for s in range(4)])
            logits, _ = model(ids, cache=cache.view(0, 4, live=[s in out for s in range(4)]))
            for s in out:
                out[s].append(int(logits[s, -1].argmax()))
    assert int(cache.lengths[1]) == 0  # the free row computed a throw-away token but did not grow
    for slot, p in prompts.items():
        assert out[slot] == greedy_reference(model, p, 13)


def test_requests_arriving_at_different_times_get_the_tokens_they_would_alone(model):
    engine = Engine(model, n_slots=3, max_waiting=8)
    jobs = [([1, 2, 3, 4, 5, 6, 7], 30), ([8, 9], 10), ([10, 11, 12, 13], 25), ([5] * 20, 7), ([42], 18)]
    handles = [engine.submit(Request(jobs[0][0], SamplingParams(max_new_tokens=jobs[0][1], temperature=0)))]
    schedule = {4: [1], 6: [2, 3, 4]}  # step -> jobs that arrive then (job 4 waits for a free slot)
    step = 0
    while engine.running or engine.waiting or step <= max(schedule):
        for j in schedule.get(step, []):
            handles.append(engine.submit(Request(jobs[j][0], SamplingParams(max_new_tokens=jobs[j][1],
                                                                            temperature=0))))
        engine.step()
        step += 1
    got = [tokens_of(h) for h in handles]
    for (prompt, n), tokens in zip(jobs, got):
        assert tokens == greedy_reference(model, prompt, n)
    assert len(set(got[0])) > 3  # a varied sequence, so the comparison means something


def test_n_completions_share_one_prefill_and_each_samples_as_it_would_alone(model):
    engine = Engine(model, n_slots=4)
    prefills = []
    hook = model.register_forward_pre_hook(lambda m, args: prefills.append(args[0].shape[1]) if args[0].shape[1] > 1
                                           else None)
    try:
        p = SamplingParams(max_new_tokens=12, temperature=0.9, top_k=40, seed=7)
        h = engine.submit(Request([3, 1, 4, 1, 5], p, n=3))
        while engine.running or engine.waiting:
            engine.step()
    finally:
        hook.remove()
    assert prefills == [5]  # one prefill of the 5-token prompt for all three completions
    by_choice = {0: [], 1: [], 2: []}
    for ev in h:
        if ev.token is not None:
            by_choice[ev.index].append(ev.token)
    for j, toks in by_choice.items():  # completion j draws from its own generator, seeded seed + j
        alone = generate(model, [3, 1, 4, 1, 5], max_new_tokens=12, temperature=0.9, top_k=40, seed=7 + j)
        assert toks == alone.tokens
    assert by_choice[0] != by_choice[1]


def test_a_full_queue_refuses_with_a_message(model):
    engine = Engine(model, n_slots=1, max_waiting=2)
    for _ in range(2):
        engine.submit(Request([1, 2], SamplingParams(max_new_tokens=3)))
    with pytest.raises(QueueFullError, match="2 requests are already waiting"):
        engine.submit(Request([1, 2], SamplingParams(max_new_tokens=3)))


def test_bad_requests_are_refused_before_they_queue(model):
    engine = Engine(model, n_slots=2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.submit(Request([1, 10_000]))
    with pytest.raises(ValueError, match="context holds 128"):
        engine.submit(Request(list(range(128))))
    with pytest.raises(ValueError, match="n must be between 1 and 2"):
        engine.submit(Request([1], n=3))
    assert engine.waiting == 0


def test_cancel_frees_the_slot_before_the_next_step(model):
    engine = Engine(model, n_slots=1)
    h = engine.submit(Request([1, 2, 3], SamplingParams(max_new_tokens=100, temperature=0)))
    for _ in range(3):
        engine.step()
    assert engine.running == 1
    h.cancel()
    other = engine.submit(Request([4, 5], SamplingParams(max_new_tokens=5, temperature=0)))
    engine.step()  # the cancelled request leaves; the waiting one takes its slot in the same step
    events = list(h)
    assert events[-1].finish_reason == "cancelled" and len(events) == 4 + 1
    while engine.running:
        engine.step()
    assert tokens_of(other) == greedy_reference(model, [4, 5], 5)
    assert int(engine.cache.lengths[0]) == 0


def test_logprobs_are_the_models_log_softmax_at_each_step(model):
    engine = Engine(model, n_slots=2)
    prompt = [7, 8, 9, 10]
    h = engine.submit(Request(prompt, SamplingParams(max_new_tokens=8, temperature=1.0, seed=3), logprobs=3,
                              prompt_logprobs=True))
    while engine.running or engine.waiting:
        engine.step()
    events = [ev for ev in h if ev.token is not None]
    ids = prompt + [ev.token for ev in events]
    reference = full_logits(model, ids).float().log_softmax(-1)  # (T, V): position t predicts token t+1
    for k, ev in enumerate(events):
        row = reference[len(prompt) - 1 + k]
        assert ev.logprob == pytest.approx(float(row[ev.token]), abs=1e-4)
        top = row.topk(3)
        assert [t for t, _ in ev.top_logprobs] == top.indices.tolist()
        assert [v for _, v in ev.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-4)
    assert h.prompt_logprobs[0] is None
    for t in range(1, len(prompt)):
        assert h.prompt_logprobs[t] == pytest.approx(float(reference[t - 1, prompt[t]]), abs=1e-4)


def test_presence_and_frequency_penalties_follow_the_openai_formula(model):
    presence, frequency, n = 1.5, 0.7, 20
    engine = Engine(model, n_slots=1)
    h = engine.submit(Request([1, 2, 3], SamplingParams(max_new_tokens=n, temperature=0),
                              presence_penalty=presence, frequency_penalty=frequency))
    while engine.running or engine.waiting:
        engine.step()
    ids, counts = [1, 2, 3], torch.zeros(model.config.vocab_size)
    for _ in range(n):  # logit - presence * [count > 0] - frequency * count, over generated tokens only
        logits = full_logits(model, ids)[-1] - presence * (counts > 0).float() - frequency * counts
        t = int(logits.argmax())
        counts[t] += 1
        ids.append(t)
    got = tokens_of(h)
    assert got == ids[3:]
    assert got != greedy_reference(model, [1, 2, 3], n)  # the penalties changed the output


def test_stop_strings_cut_the_text_and_stream_only_certain_text():
    from gator.tokenizer import train_bpe

    tok = train_bpe("the cat sat on the mat. " * 30, vocab_size=266, progress=False, workers=1)
    model = make(vocab_size=tok.vocab_size)
    prompt = tok.encode_ordinary("the cat")
    free = greedy_reference(model, prompt, 40)
    text = tok.decode(free)
    stop = text[15:17]  # two characters from the middle of what the model writes
    engine = Engine(model, tok, n_slots=2)
    h = engine.submit(Request(prompt, SamplingParams(max_new_tokens=40, temperature=0, stop_strings=[stop])))
    while engine.running or engine.waiting:
        engine.step()
    events = list(h)
    assert "".join(ev.text for ev in events) == text[:text.find(stop)]
    assert events[-1].finish_reason == "stop"


def test_generate_batched_runs_the_static_api_on_the_engine(model):
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13], [5] * 20]
    out = generate_batched(model, prompts, n_slots=2, max_new_tokens=12, temperature=0, stop_tokens=[17])
    for p, c in zip(prompts, out):
        assert c.tokens == greedy_reference(model, p, 12, stop={17})
        assert c.prompt_tokens == len(p)


def test_background_thread_serves_requests_from_many_threads(model):
    engine = Engine(model, n_slots=3, max_waiting=16).start()
    try:
        jobs = [([i + 1, i + 2, i + 3][: 1 + i % 3], 5 + 3 * i) for i in range(6)]
        results = [None] * len(jobs)

        def client(i):
            prompt, n = jobs[i]
            results[i] = tokens_of(engine.submit(Request(prompt, SamplingParams(max_new_tokens=n, temperature=0))))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        for (prompt, n), got in zip(jobs, results):
            assert got == greedy_reference(model, prompt, n)
    finally:
        engine.shutdown()


def test_a_failing_prefill_ends_that_request_and_the_engine_goes_on(model, monkeypatch):
    engine = Engine(model, n_slots=2)
    original = Engine._prefill

    def broken_once(self, h, slots):
        if h.request.prompt == [66, 66]:
            raise RuntimeError("simulated failure")
        return original(self, h, slots)

    monkeypatch.setattr(Engine, "_prefill", broken_once)
    bad = engine.submit(Request([66, 66], SamplingParams(max_new_tokens=5), n=2))
    good = engine.submit(Request([4, 5], SamplingParams(max_new_tokens=5, temperature=0)))
    while engine.running or engine.waiting:
        engine.step()
    assert [ev.finish_reason for ev in bad] == ["error", "error"]
    assert tokens_of(good) == greedy_reference(model, [4, 5], 5)


def test_mixture_of_depths_models_are_refused_with_a_reason():
    model = make(mod_layers=[1])
    with pytest.raises(ValueError, match="Mixture-of-Depths"):
        Engine(model)


def test_engine_text_never_releases_the_start_of_a_stop_string_split_across_bytes():
    """Issue 10 item 5 for the engine: GPT-2 splits 日 and 本 into two byte tokens each; '日' must not be
    released while '本' is incomplete, since '日本' is the stop string. The reference is the text itself."""
    from pathlib import Path

    from gator.generate.engine import _TextStream
    from gator.tokenizer import Tokenizer

    gpt2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "gpt2"
    tok = Tokenizer.from_gpt2_files(gpt2 / "vocab.json", gpt2 / "merges.txt")
    text = "Answer: 42。日本 more"
    stream, released, stopped = _TextStream(tok, ["日本"]), "", False
    for token in tok.encode_ordinary(text):
        delta, stopped = stream.push(token)
        released += delta
        if stopped:
            break
    assert stopped and released == text[:text.index("日本")]
