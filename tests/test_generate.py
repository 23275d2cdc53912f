"""Generation: cached decoding against a no-cache reference loop, padding, sampling filters against
transformers' logits processors, streaming, stop conditions and input errors."""

import pytest
import torch

from gator.config import get_preset
from gator.generate import SamplingParams, generate, process_logits, stream
from gator.model import Transformer


@pytest.fixture(scope="module", params=["tiny-gatorgpt", "tiny-gpt2"])
def model(request):
    torch.manual_seed(0)
    # A larger init spread makes a random model's greedy output varied rather than one repeated token.
    return Transformer(get_preset(request.param, init_std=0.3)).eval()


def greedy_without_cache(model, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        with torch.no_grad():
            logits, _ = model(torch.tensor([ids]))
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_greedy_with_cache_equals_without(model):
    prompt = [3, 14, 15, 92, 65]
    out = generate(model, prompt, max_new_tokens=40, temperature=0)
    assert out.tokens == greedy_without_cache(model, prompt, 40)
    assert len(set(out.tokens)) > 3  # a varied sequence, so the comparison means something
    assert out.finish_reason == "length" and out.prompt_tokens == 5


def test_batch_of_different_lengths_equals_each_alone(model):
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13]]
    batch = generate(model, prompts, max_new_tokens=15, temperature=0)
    for prompt, got in zip(prompts, batch):
        assert got.tokens == greedy_without_cache(model, prompt, 15)


def test_sliding_window_decoding_matches_full_recompute():
    torch.manual_seed(0)
    model = Transformer(get_preset("tiny-gatorgpt", sliding_window=6, init_std=0.3)).eval()
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [4, 5]]
    for prompt, got in zip(prompts, generate(model, prompts, max_new_tokens=20, temperature=0)):
        assert got.tokens == greedy_without_cache(model, prompt, 20)


def test_sampling_is_reproducible_with_a_seed(model):
    kw = dict(max_new_tokens=20, temperature=1.0, top_k=50, top_p=0.9, seed=123)
    a = generate(model, [1, 2, 3], **kw).tokens
    assert a == generate(model, [1, 2, 3], **kw).tokens
    assert a != generate(model, [1, 2, 3], **{**kw, "seed": 124}).tokens


def test_top_k_one_is_greedy(model):
    greedy = generate(model, [5, 6, 7], max_new_tokens=10, temperature=0).tokens
    assert generate(model, [5, 6, 7], max_new_tokens=10, temperature=0.7, top_k=1, seed=0).tokens == greedy
    assert generate(model, [5, 6, 7], max_new_tokens=10, temperature=0.7, top_p=1e-6, seed=0).tokens == greedy


@pytest.mark.parametrize("penalty,temperature,top_k,top_p", [
    (1.0, 0.7, 20, None), (1.3, 1.0, None, 0.8), (0.8, 1.5, 7, 0.5), (1.2, 1.0, None, None)])
def test_logit_processing_matches_transformers(penalty, temperature, top_k, top_p):
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(0)
    logits = torch.randn(4, 100) * 3
    history = torch.randint(0, 100, (4, 12))
    procs = LogitsProcessorList()
    if penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(penalty))
    procs.append(TemperatureLogitsWarper(temperature))
    if top_k:
        procs.append(TopKLogitsWarper(top_k))
    if top_p:
        procs.append(TopPLogitsWarper(top_p))
    ref = procs(history, logits.clone())
    seen = torch.zeros(4, 100, dtype=torch.bool).scatter_(1, history, True)
    ours = process_logits(logits, SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p,
                                                 repetition_penalty=penalty), seen)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    finite = ~torch.isinf(ref)
    torch.testing.assert_close(ours[finite], ref[finite])


def test_repetition_penalty_matches_transformers_generate():
    """Greedy decoding with a penalty, end to end, equals transformers' generate on the same weights."""
    from gator.interop.hf import to_hf

    torch.manual_seed(0)
    model = Transformer(get_preset("tiny-gatorgpt", init_std=0.3)).eval()
    hf = to_hf(model)
    prompt = [7, 7, 9, 11, 7]
    ours = generate(model, prompt, max_new_tokens=20, temperature=0, repetition_penalty=1.5).tokens
    theirs = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 5, dtype=torch.long),
                         max_new_tokens=20, do_sample=False, repetition_penalty=1.5, pad_token_id=0,
                         eos_token_id=None)[0, 5:].tolist()
    assert ours == theirs


class CharTokenizer:
    """Stand-in tokenizer for stop strings: token i is the character chr(97 + i % 26)."""

    def encode(self, text):
        return [ord(ch) - 97 for ch in text]

    def decode(self, ids):
        return "".join(chr(97 + i % 26) for i in ids)


def test_stream_equals_generate_and_text_is_complete(model):
    tok = CharTokenizer()
    full = generate(model, "hello", tokenizer=tok, max_new_tokens=25, temperature=0)
    events = list(stream(model, "hello", tokenizer=tok, max_new_tokens=25, temperature=0))
    assert [e.token for e in events] == full.tokens
    assert "".join(e.text for e in events) == full.text
    assert events[-1].finish_reason == "length" and all(e.finish_reason is None for e in events[:-1])


def test_stop_tokens_and_strings(model):
    tok = CharTokenizer()
    base = generate(model, "abc", tokenizer=tok, max_new_tokens=30, temperature=0)
    stop_tok = base.tokens[6]
    first = base.tokens.index(stop_tok)
    out = generate(model, "abc", tokenizer=tok, max_new_tokens=30, temperature=0, stop_tokens=[stop_tok])
    assert out.tokens == base.tokens[:first] and out.finish_reason == "stop"
    events = list(stream(model, "abc", tokenizer=tok, max_new_tokens=30, temperature=0, stop_tokens=[stop_tok]))
    assert [e.token for e in events[:-1]] == base.tokens[:first] and events[-1].finish_reason == "stop"

    stop = base.text[10:13]
    cut = base.text.find(stop)
    out = generate(model, "abc", tokenizer=tok, max_new_tokens=30, temperature=0, stop_strings=[stop])
    assert out.text == base.text[:cut] and out.finish_reason == "stop"
    streamed = "".join(e.text for e in stream(model, "abc", tokenizer=tok, max_new_tokens=30, temperature=0,
                                              stop_strings=[stop]))
    assert streamed == base.text[:cut]


def test_generation_stops_when_the_context_is_full(model):
    C = model.config.context_length
    out = generate(model, list(range(C - 3)), max_new_tokens=50, temperature=0)
    assert len(out.tokens) == 3 and out.finish_reason == "length"


@pytest.mark.parametrize("prompt,kwargs,match", [
    ([], {}, "empty"),
    ([[1, 2], []], {}, "prompt 1 is empty"),
    (list(range(128)), {}, "128 tokens but the model's context is 128"),
    ([1, 99999], {}, "outside the vocabulary"),
    ([1], dict(temperature=-1), "temperature"),
    ([1], dict(top_k=0), "top_k"),
    ([1], dict(top_p=1.5), "top_p"),
    ([1], dict(repetition_penalty=0), "repetition_penalty"),
    ([1], dict(max_new_tokens=0), "max_new_tokens"),
    ("text", {}, "needs a tokenizer"),
    ([1], dict(stop_strings=["x"]), "stop_strings need a tokenizer"),
])
def test_bad_input_gives_clear_errors(prompt, kwargs, match):
    model = Transformer(get_preset("tiny-gatorgpt"))
    with pytest.raises(ValueError, match=match):
        generate(model, prompt, **kwargs)
