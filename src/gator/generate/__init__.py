"""Text generation: turn a model's next-token distribution into text.

    prompts.py      what a prompt may be (text, token ids, numpy arrays, batches), checked against the model
    sampling.py     SamplingParams; repetition penalty, temperature, top-k, top-p; drawing the next token
    decode.py       batched KV-cached decoding: prefill once, then one token per step (a token iterator)
    speculative.py  greedy decoding with multi-token-prediction drafts (a token iterator)
    completions.py  generate / stream: the one place that stops rows and assembles their text
    cpu_linear.py   fast_cpu_linears: faster small-batch nn.Linear products on CPU, while generating

The KV cache itself is part of the model (gator/model/cache.py).
"""

from gator.generate.completions import Completion, StreamEvent, generate, stream
from gator.generate.cpu_linear import fast_cpu_linears
from gator.generate.sampling import SamplingParams, process_logits, sample_next

__all__ = ["Completion", "SamplingParams", "StreamEvent", "fast_cpu_linears", "generate", "process_logits",
           "sample_next", "stream"]
