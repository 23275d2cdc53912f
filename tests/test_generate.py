"""Generation: cached decoding against a no-cache reference loop, padding, budgets near the end of the
context, sampling filters against transformers' logits processors, streaming against a direct
computation of the text (unicode, stop strings across tokens), stop conditions, prompt types and errors."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gator.config import get_preset
from gator.generate import SamplingParams, generate, process_logits, stream
from gator.model import Transformer
from gator.model.cache import KVCache
from gator.tokenizer.bpe import Tokenizer

GPT2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "gpt2"


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

    def encode_ordinary(self, text):
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


def test_each_row_of_a_batch_gets_its_own_budget_near_the_context_end(model):
    """Issue 10 item 6: with context 128, a 3-token prompt batched with a 125-token one still gets its 100
    tokens, as it would alone; the long prompt gets the 3 that fit. Reference: the no-cache loop."""
    C = model.config.context_length
    torch.manual_seed(1)
    prompts = [torch.randint(0, 512, (C - 3,)).tolist(), [5, 9, 2], torch.randint(0, 512, (60,)).tolist()]
    batch = generate(model, prompts, max_new_tokens=100, temperature=0)
    for prompt, got in zip(prompts, batch):
        n = min(100, C - len(prompt))
        alone = generate(model, prompt, max_new_tokens=100, temperature=0)
        assert got.tokens == alone.tokens == greedy_without_cache(model, prompt, n)
        assert got.finish_reason == alone.finish_reason == "length"
    assert [len(c.tokens) for c in batch] == [3, 100, 68]


def test_rows_leaving_the_batch_keep_mla_caches_right():
    """Rows with different budgets leave the batch at different steps (DeepSeek-style MLA cache, MoE)."""
    torch.manual_seed(0)
    model = Transformer(get_preset("deepseek-tiny", init_std=0.3)).eval()
    prompts = [list(range(1, 120)), [7, 8, 9], list(range(20, 40))]
    batch = generate(model, prompts, max_new_tokens=15, temperature=0)
    for prompt, got in zip(prompts, batch):
        assert got.tokens == greedy_without_cache(model, prompt, min(15, 128 - len(prompt)))


def test_rewound_cache_equals_a_full_forward(model):
    """KVCache.rewind(n) forgets the last n entries: re-feeding other tokens gives the no-cache logits."""
    ids = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79, 32]])
    with torch.no_grad():
        full, _ = model(ids)
        cache = KVCache.for_model(model, 1, max_len=12)
        model(ids[:, :6], cache=cache)
        model(torch.tensor([[1, 2, 3]]), cache=cache)  # rejected drafts
        cache.rewind(3)
        assert cache.length == 6
        tail, _ = model(ids[:, 6:], cache=cache)
    torch.testing.assert_close(tail, full[:, 6:], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="cannot rewind"):
        cache.rewind(10)


@pytest.mark.parametrize("as_prompt", [np.array, lambda ids: [np.int64(t) for t in ids], torch.tensor, tuple])
def test_numpy_and_tensor_prompts_are_accepted(model, as_prompt):
    """Issue 10 item 11: a numpy array or a list of numpy ints is a prompt, and a 2-D one is a batch."""
    prompts = [[3, 14, 15, 92], [65, 35]]
    ref = [greedy_without_cache(model, pr, 6) for pr in prompts]
    assert generate(model, as_prompt(prompts[0]), max_new_tokens=6, temperature=0).tokens == ref[0]
    batch = [as_prompt(pr) for pr in prompts]
    assert [c.tokens for c in generate(model, batch, max_new_tokens=6, temperature=0)] == ref
    square = np.array([[3, 14, 15, 92], [65, 35, 8, 9]])
    got = generate(model, square, max_new_tokens=6, temperature=0)
    assert [c.tokens for c in got] == [greedy_without_cache(model, row, 6) for row in square.tolist()]


@pytest.mark.parametrize("prompt,match", [
    ([1.0, 2.0], "not a sequence of integer token ids"),
    (np.zeros((1, 2, 3), dtype=np.int64), "1-D .* or 2-D"),
    (7, "cannot use a int as a prompt"),
    ([[1, 2], "x", [3]], "a text prompt needs a tokenizer"),
])
def test_prompts_of_the_wrong_kind_say_what_is_expected(prompt, match):
    with pytest.raises(ValueError, match=match):
        generate(Transformer(get_preset("tiny-gatorgpt")), prompt)


class ScriptedModel(nn.Module):
    """A stand-in model whose greedy continuation of a single prompt is `script` (then its last token
    again): it lets a test choose exactly which tokens, and so which text, generation produces. It keeps
    the KV-cache protocol (the cache advances once per forward) but stores no keys."""

    def __init__(self, script: list[int], vocab_size: int = 50257):
        super().__init__()
        self.config = get_preset("tiny-gpt2", vocab_size=vocab_size)
        self.weight = nn.Parameter(torch.zeros(1))
        self.script = script

    def forward(self, ids, cache=None, last_only=False):
        B, T = ids.shape
        if cache.length == 0:
            self.prompt_len = T
        n = cache.length + T - self.prompt_len  # tokens generated before the one these logits choose
        cache.advance(T)
        logits = torch.zeros(B, 1, self.config.vocab_size)
        logits[:, -1, self.script[min(n, len(self.script) - 1)]] = 1.0
        return logits, None


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    if not GPT2.is_dir():
        pytest.fail(f"shared data not found at {GPT2}; the repository must sit beside shared/")
    return Tokenizer.from_gpt2_files(GPT2 / "vocab.json", GPT2 / "merges.txt")


def expected(tokenizer, tokens, budget, stop_tokens=(), stop_strings=()):
    """What generation must give, computed directly: the scripted tokens up to the budget, cut before a
    stop token, then at the first prefix whose text contains a stop string; the text cut before it."""
    tokens = tokens[:budget]
    for i, t in enumerate(tokens):
        if t in stop_tokens:
            tokens = tokens[:i]
            break
    for n in range(1, len(tokens) + 1):
        text = tokenizer.decode(tokens[:n])
        hits = [text.find(s) for s in stop_strings if s in text]
        if hits:
            return tokens[:n], text[:min(hits)]
    return tokens, tokenizer.decode(tokens)


def test_stream_never_releases_the_start_of_a_stop_string(gpt2_tokenizer):
    """Issue 10 item 5: GPT-2 splits 日 and 本 into two byte tokens each; the stream held back '日' only
    while 本 was incomplete and then released it, though '日本' is the stop string."""
    tok = gpt2_tokenizer
    script = tok.encode("Answer: 42。日本")
    model = ScriptedModel(script + tok.encode(" more"))
    full = generate(model, [0], tokenizer=tok, max_new_tokens=20, temperature=0, stop_strings=["日本"])
    assert (full.text, full.finish_reason) == ("Answer: 42。", "stop")
    assert full.tokens == script
    events = list(stream(model, [0], tokenizer=tok, max_new_tokens=20, temperature=0, stop_strings=["日本"]))
    assert "".join(e.text for e in events) == "Answer: 42。"
    assert [e.token for e in events] == script and events[-1].finish_reason == "stop"


PIECES = ["Answer", ": ", "42", "。", "日本", "語", " the", " cat", "é", "ß", "🦎", "👍🏽", "\n", " ", "Ω", "ü",
          "a", "<", "|", "x", "ĳ", "中文", "…", "🙂", "ab"]


def test_stream_equals_generate_over_random_unicode_and_stop_strings(gpt2_tokenizer):
    """Streamed pieces add up to generate's text, which equals the direct computation, over 300 random
    cases: multi-byte characters split across tokens, stop strings spanning tokens, stop tokens, budgets."""
    tok, rng = gpt2_tokenizer, random.Random(0)
    for case in range(300):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12)))
        script = tok.encode(text)
        stop_strings, stop_tokens = [], []
        for _ in range(rng.randint(0, 2)):
            i = rng.randrange(len(text))
            stop_strings.append(text[i:i + rng.randint(1, 4)] if rng.random() < 0.8 else rng.choice(PIECES))
        if rng.random() < 0.2:
            stop_tokens.append(rng.choice(script))
        budget = rng.randint(1, len(script) + 3)
        kw = dict(tokenizer=tok, max_new_tokens=budget, temperature=0, stop_strings=stop_strings,
                  stop_tokens=stop_tokens)
        model = ScriptedModel(script)
        got = generate(model, [0], **kw)
        streamed = "".join(e.text for e in stream(model, [0], **kw))
        want_tokens, want_text = expected(tok, script + [script[-1]] * 3, budget, stop_tokens, stop_strings)
        where = f"case {case}: {text!r}, stops {stop_strings} {stop_tokens}, budget {budget}"
        assert (got.tokens, got.text) == (want_tokens, want_text), where
        assert streamed == got.text, where


def test_draw_picks_the_first_token_whose_cumulative_probability_exceeds_u():
    """Inverse-CDF sampling against a direct float64 computation, its frequencies against the probabilities,
    and never a token of probability 0 (also at u = 0 and u just below 1, with rows that do not sum to 1)."""
    from gator.generate.sampling import draw

    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0], [0.0, 2.0, 0.0, 0.0, 6.0]])
    for u in [0.0, 0.1, 0.25, 0.5, 0.7999, 0.8001, 0.99, 1 - 2 ** -24]:
        got = draw(probs, torch.tensor([u, u])).tolist()
        for row, token in zip(probs.double().tolist(), got):
            cdf = np.cumsum(row)
            assert token == int(np.argmax(cdf > u * cdf[-1])), (u, row)
    g = torch.Generator().manual_seed(0)
    tokens = draw(probs[:1].expand(200_000, -1), torch.rand(200_000, generator=g))
    freq = torch.bincount(tokens, minlength=5).double() / 200_000
    assert torch.allclose(freq, probs[0].double(), atol=0.005) and freq[1] == 0 and freq[4] == 0
