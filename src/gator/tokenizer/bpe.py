"""Byte-level byte-pair encoding (BPE): learn merges from a corpus, then encode and decode text with them.

BPE (Sennrich et al., 2016, "Neural Machine Translation of Rare Words with Subword Units"; byte-level
since GPT-2, Radford et al., 2019) starts from the 256 possible bytes, so any text can be encoded, and
learns a list of *merges*: "the pair of tokens (a, b) becomes one new token ab". Training repeats one
step: find the most frequent adjacent pair in the corpus and merge it everywhere. Encoding replays the
merges on new text, always applying the earliest-learned merge that applies.

Two ideas make training fast enough for real corpora:

- The corpus is reduced to {pre-token: count} (see corpus.py); a pre-token that occurs 10,000 times is
  stored and merged once, with weight 10,000.
- Pair counts are kept up to date incrementally. Merging (a, b) into z only changes the counts of pairs
  next to an occurrence of (a, b), so we keep, for each pair, the set of words it occurs in, and touch
  only those words. A heap finds the most frequent pair; pairs whose counts went down since they were
  pushed are noticed when they reach the top and pushed again with their true count.

Ties between equally frequent pairs go to the lexicographically greatest pair of byte strings (compare
the first tokens, then the second), so training is deterministic.
"""

from __future__ import annotations

import heapq
import re
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import regex
from tqdm import tqdm

from . import formats
from .chat import ChatTemplate
from .corpus import count_pretokens
from .formats import TokenizerParts, engine_gap
from .patterns import (
    check_special_tokens,
    cut_finder,
    last_cut,
    pattern_name,
    resolve_pattern,
    special_regex,
    split_on_special,
)

_STREAM_CHARS = 1 << 16  # encode_iterable encodes once this many characters are buffered


def _descending(token: bytes) -> tuple[int, ...]:
    """A key that sorts byte strings in *descending* lexicographic order (a prefix sorts after)."""
    return tuple(255 - byte for byte in token) + (256,)


def learn_merges(words: list[list[int]], freqs: list[int], vocab: list[bytes], vocab_size: int,
                 progress: bool = False) -> list[tuple[int, int]]:
    """Merge the most frequent pair until `vocab` (a list: id -> bytes, extended in place) has vocab_size
    tokens. `words` are the pre-tokens as lists of token ids, `freqs` how often each occurs. Returns the
    merges as (id_a, id_b) pairs in the order learned; the merge number k made token id vocab[...] = a+b."""
    counts: dict[tuple[int, int], int] = defaultdict(int)  # pair -> weighted number of occurrences
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> words it may occur in
    for w, word in enumerate(words):
        for pair in zip(word, word[1:]):
            counts[pair] += freqs[w]
            where[pair].add(w)
    key = [_descending(token) for token in vocab]
    heap = [(-count, key[a], key[b], a, b) for (a, b), count in counts.items()]
    heapq.heapify(heap)
    id_of = {token: i for i, token in enumerate(vocab)}
    merges: list[tuple[int, int]] = []
    bar = tqdm(total=vocab_size - len(vocab), desc="merging", unit="merge", disable=not progress, leave=False)
    while len(vocab) < vocab_size and heap:
        # Pop until the top entry's count is current; stale entries are re-pushed with their true count.
        negative, _, _, a, b = heap[0]
        count = counts.get((a, b), 0)
        if count != -negative:
            if count > 0:
                heapq.heapreplace(heap, (-count, key[a], key[b], a, b))
            else:
                heapq.heappop(heap)
            continue
        heapq.heappop(heap)
        merged = vocab[a] + vocab[b]
        z = id_of.get(merged)  # the same bytes can (rarely) be reached by two merges: reuse the token
        if z is None:
            z = id_of[merged] = len(vocab)
            vocab.append(merged)
            key.append(_descending(merged))
            bar.update(1)
        merges.append((a, b))
        del counts[(a, b)]
        touched = set()
        for w in where.pop((a, b)):
            word, f = words[w], freqs[w]
            if len(word) < 2:
                continue
            out: list[int] = []
            i, n = 0, len(word)
            while i < n:
                if word[i] == a and i + 1 < n and word[i + 1] == b:
                    if out:  # the pair on the left: (left, a) -> (left, z)
                        left = out[-1]
                        counts[(left, a)] -= f
                        counts[(left, z)] += f
                        touched.add((left, z))
                        where[(left, z)].add(w)
                    if i + 2 < n:  # the pair on the right: (b, right) -> (z, right)
                        right = word[i + 2]
                        if not (right == b == a):  # (a, b) itself is already gone
                            counts[(b, right)] -= f
                        counts[(z, right)] += f
                        touched.add((z, right))
                        where[(z, right)].add(w)
                    out.append(z)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            words[w] = out
        # Only pairs that contain z can have grown; every other count only went down (handled lazily).
        for pair in touched:
            if counts[pair] > 0:
                heapq.heappush(heap, (-counts[pair], key[pair[0]], key[pair[1]], pair[0], pair[1]))
    bar.close()
    return merges


def train_bpe(source, vocab_size: int, special_tokens=(), pattern: str = "gpt2", progress: bool = True,
              *, workers: int | None = None) -> Tokenizer:
    """Learn a byte-level BPE tokenizer from `source`: a path, a list of paths, a string, or an iterable of
    strings. `vocab_size` counts everything: 256 byte tokens + the special tokens + the merges."""
    pattern = resolve_pattern(pattern)
    special_tokens = check_special_tokens(special_tokens)
    if not isinstance(vocab_size, int) or vocab_size < 256 + len(special_tokens):
        raise ValueError(f"vocab_size {vocab_size} is too small: a byte-level BPE vocabulary holds 256 byte "
                         f"tokens + {len(special_tokens)} special token(s); use vocab_size >= "
                         f"{256 + len(special_tokens)} (and more to learn merges)")
    counts = count_pretokens(source, pattern, special_tokens, workers=workers, progress=progress)
    if not counts:
        raise ValueError("the training corpus is empty (no text outside special tokens); give a file or "
                         "string with some text in it")
    words = [list(piece.encode("utf-8")) for piece in counts]
    vocab = [bytes([i]) for i in range(256)]
    merge_ids = learn_merges(words, list(counts.values()), vocab, vocab_size - len(special_tokens), progress)
    merges = [(vocab[a], vocab[b]) for a, b in merge_ids]
    if len(vocab) + len(special_tokens) < vocab_size:
        warnings.warn(f"the corpus has only {len(merges)} merges to learn (no pair of tokens is left), so the "
                      f"vocabulary has {len(vocab) + len(special_tokens)} tokens, not {vocab_size}; give more "
                      "text for a larger vocabulary", stacklevel=2)
    return Tokenizer(dict(enumerate(vocab)), merges, special_tokens, pattern)


class Tokenizer:
    """A byte-level BPE tokenizer: a vocabulary (id -> bytes), the merges in the order they were learned,
    special tokens, the pre-tokenizer pattern (a name: gpt2, gpt4, o200k; or a regex), and optionally a chat
    template (see chat.py).

    Attributes: `vocab` {id: bytes} (special tokens included), `merges` [(bytes, bytes)], `special_tokens`
    [str], `special_ids` {str: id}, `pattern` (the regex), `chat_template` (a chat.ChatTemplate or None),
    and `use_fast`: set it to False to make encode() take the pure-Python path. Special tokens missing from
    `vocab` get the next free ids."""

    def __init__(self, vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]],
                 special_tokens: list[str] | None = None, pattern: str = "gpt2",
                 chat_template: ChatTemplate | None = None):
        self.pattern = resolve_pattern(pattern)
        self.special_tokens = check_special_tokens(special_tokens)
        self.vocab = {int(i): bytes(token) for i, token in vocab.items()}
        id_of: dict[bytes, int] = {}
        for i, token in sorted(self.vocab.items()):
            if not token:
                raise ValueError(f"token id {i} is empty; every token must have at least one byte")
            if token in id_of:
                raise ValueError(f"token ids {id_of[token]} and {i} are the same bytes {token!r}; "
                                 "each token must be listed once")
            id_of[token] = i
        missing = [b for b in range(256) if bytes([b]) not in id_of]
        if missing:
            raise ValueError(f"the vocabulary lacks {len(missing)} of the 256 single bytes (e.g. {missing[0]}); "
                             "a byte-level BPE needs all of them so that any text can be encoded")
        self.merges = [(bytes(a), bytes(b)) for a, b in merges]
        self._byte_id = [id_of[bytes([b])] for b in range(256)]
        self._rank: dict[tuple[int, int], int] = {}  # (id_a, id_b) -> merge number
        self._merged: list[int] = []  # merge number -> id of the token it makes
        for rank, (a, b) in enumerate(self.merges):
            for part in (a, b, a + b):
                if part not in id_of:
                    raise ValueError(f"merge {rank} ({a!r}, {b!r}) uses {part!r}, which is not in the vocabulary")
            self._rank.setdefault((id_of[a], id_of[b]), rank)
            self._merged.append(id_of[a + b])
        self.special_ids: dict[str, int] = {}
        made = set(self._merged) | set(self._byte_id)
        for token in self.special_tokens:
            i = id_of.get(token.encode("utf-8"))
            if i is not None and i in made:
                raise ValueError(f"special token {token!r} is also an ordinary token (id {i}); pick another")
            if i is None:
                i = max(self.vocab) + 1
                self.vocab[i] = token.encode("utf-8")
            self.special_ids[token] = i
        if chat_template is not None:
            unknown = [t for t in (chat_template.start, chat_template.end) if t not in self.special_ids]
            if unknown:
                raise ValueError(f"the chat template's markers {unknown} are not special tokens of this tokenizer; "
                                 "add the template with gator.tokenizer.chat.add_chat_template")
        self.chat_template = chat_template
        self._regex = regex.compile(self.pattern)
        self._special_res: dict[frozenset[str], regex.Pattern | None] = {}  # allowed specials -> their regex
        # When no special token is a prefix of another, any order of trying them finds the same match, so
        # tiktoken may split them off itself.
        self._tiktoken_matches_specials = not any(
            a != b and b.startswith(a) for a in self.special_tokens for b in self.special_tokens)
        self._cache: dict[str, list[int]] = {}
        self.use_fast = True  # set False to make encode() take the pure-Python path
        self._fast = None
        self.fast_path_problem: str | None = None  # why no tiktoken fast path exists, once checked

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def vocab_size(self) -> int:
        """One more than the largest id: the number of rows a model's embedding needs for this tokenizer."""
        return max(self.vocab) + 1

    def __repr__(self) -> str:
        chat = "" if self.chat_template is None else f", chat_template={self.chat_template}"
        return (f"Tokenizer(vocab_size={len(self.vocab)}, merges={len(self.merges)}, "
                f"special_tokens={self.special_tokens}, pattern={pattern_name(self.pattern)!r}{chat})")

    # -- which special tokens the text may contain (tiktoken's rules) -----------------------------------

    def _specials(self, names, what: str) -> frozenset[str]:
        if names == "all":
            return frozenset(self.special_tokens)
        if isinstance(names, str):
            raise ValueError(f"{what} must be 'all' or a set of special tokens, e.g. {{{names!r}}}, not one string")
        names = frozenset(names)
        unknown = sorted(names - set(self.special_ids))
        if unknown:
            raise ValueError(f"{what} names {unknown}, which this tokenizer does not have as special tokens "
                             f"(it has {self.special_tokens})")
        return names

    def _prepare(self, text: str, allowed_special, disallowed_special) -> tuple[str, frozenset[str]]:
        """The text to encode (lone surrogates fixed) and the special tokens to match in it; ValueError when the
        text contains a disallowed special token."""
        if not isinstance(text, str):
            raise ValueError(f"encode takes a str, got {type(text).__name__}")
        allowed = self._specials(allowed_special, "allowed_special")
        disallowed = (frozenset(self.special_tokens) - allowed if disallowed_special == "all"
                      else self._specials(disallowed_special, "disallowed_special"))
        text = fix_surrogates(text)
        if disallowed:
            found = self._special_regex(disallowed).search(text)
            if found:
                raise ValueError(
                    f"the text contains the special token {found.group()!r}. To encode it as that special token, "
                    f"pass allowed_special={{{found.group()!r}}} (or 'all'); to encode it as ordinary text, pass "
                    "disallowed_special=() or use encode_ordinary, which is what text from users needs")
        return text, allowed

    def _special_regex(self, tokens: frozenset[str]) -> regex.Pattern | None:
        if tokens not in self._special_res:
            self._special_res[tokens] = special_regex([t for t in self.special_tokens if t in tokens])
        return self._special_res[tokens]

    # -- encoding: the reference pure-Python path ------------------------------------------------------

    def _bpe(self, piece: bytes) -> list[int]:
        """Merge the bytes of one pre-token: apply the earliest-learned merge present, until none is."""
        ids = [self._byte_id[b] for b in piece]
        rank = self._rank
        while len(ids) > 1:
            best = min(zip(ids, ids[1:]), key=lambda pair: rank.get(pair, 1 << 62))
            if best not in rank:
                break
            z, out, i = self._merged[rank[best]], [], 0
            while i < len(ids):
                if i + 1 < len(ids) and ids[i] == best[0] and ids[i + 1] == best[1]:
                    out.append(z)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            ids = out
        return ids

    def encode_python(self, text: str, *, allowed_special=(), disallowed_special="all") -> list[int]:
        """`encode` by the reference pure-Python path: allowed special tokens, then regex pieces, then merges."""
        text, allowed = self._prepare(text, allowed_special, disallowed_special)
        return self._encode_python(text, allowed)

    def _encode_python(self, text: str, allowed: frozenset[str]) -> list[int]:
        ids: list[int] = []
        cache = self._cache
        if len(cache) > 500_000:
            cache.clear()
        for part, is_special in split_on_special(text, self._special_regex(allowed)):
            if is_special:
                ids.append(self.special_ids[part])
                continue
            for piece in self._regex.findall(part):
                piece_ids = cache.get(piece)
                if piece_ids is None:
                    piece_ids = cache[piece] = self._bpe(piece.encode("utf-8"))
                ids.extend(piece_ids)
        return ids

    # -- encoding: the tiktoken fast path (same ids) -----------------------------------------------------

    def fast_encoder(self):
        """The tiktoken Encoding used by encode(), built on first use; None if this vocabulary has none."""
        if self._fast is None and self.fast_path_problem is None:
            try:
                self._fast = self.to_tiktoken()
            except ValueError as err:
                self.fast_path_problem = str(err)
        return self._fast

    def _fast_agrees(self, text: str) -> bool:
        """True unless the text has a character that tiktoken's regex engine classifies differently."""
        if text.isascii():
            return True
        gap = engine_gap(self.pattern)
        return not gap or set(text).isdisjoint(gap)

    def encode(self, text: str, *, allowed_special=(), disallowed_special="all") -> list[int]:
        """Text -> token ids, with tiktoken's rules for special-token text: a special token in
        `allowed_special` (a set, or "all") becomes its id (longest match first); one in `disallowed_special`
        (default: every special token not allowed) makes encode raise ValueError; any other is ordinary text.
        So by default text that spells a special token is an error, never a control token: pass
        allowed_special="all" for trusted text with markers, and use `encode_ordinary` for text from users.
        Lone surrogates become U+FFFD and surrogate pairs their character, as in tiktoken."""
        text, allowed = self._prepare(text, allowed_special, disallowed_special)
        return self._encode(text, allowed)

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> token ids with special-token text encoded as ordinary text (tiktoken's encode_ordinary)."""
        return self.encode(text, disallowed_special=())

    def _encode(self, text: str, allowed: frozenset[str]) -> list[int]:
        fast = self.fast_encoder() if self.use_fast else None
        if fast is None or not self._fast_agrees(text):
            return self._encode_python(text, allowed)
        if not allowed:
            return fast.encode_ordinary(text)
        if self._tiktoken_matches_specials:
            return fast.encode(text, allowed_special=allowed, disallowed_special=())
        ids: list[int] = []  # tiktoken's order among special tokens is not longest-first: split here
        for part, is_special in split_on_special(text, self._special_regex(allowed)):
            if is_special:
                ids.append(self.special_ids[part])
            else:
                ids.extend(fast.encode_ordinary(part))
        return ids

    def encode_batch(self, texts: Iterable[str], num_threads: int = 8, *, allowed_special=(),
                     disallowed_special="all") -> list[list[int]]:
        """Encode many texts; on the fast path, threads run tiktoken in parallel (it releases the GIL)."""
        texts = list(texts)

        def encode(text: str) -> list[int]:
            return self.encode(text, allowed_special=allowed_special, disallowed_special=disallowed_special)

        if len(texts) < 2 or not self.use_fast or self.fast_encoder() is None:
            return [encode(text) for text in texts]
        with ThreadPoolExecutor(num_threads) as pool:
            return list(pool.map(encode, texts))

    def encode_iterable(self, iterable: Iterable[str], *, allowed_special=(),
                        disallowed_special="all") -> Iterator[int]:
        """Lazily encode the concatenation of `iterable` (e.g. an open file): same ids as encoding the whole
        text, in memory that does not grow with its length. Text is encoded up to the last position where
        it may safely be cut (see patterns.cut_finder); the rest waits for more text. (With a custom regex
        and no allowed special tokens in the text there is no safe cut, and the whole text is held.)"""
        allowed = self._specials(allowed_special, "allowed_special")
        checked = frozenset(self.special_tokens) if disallowed_special == "all" else (
            allowed | self._specials(disallowed_special, "disallowed_special"))
        finder = cut_finder(self.pattern, [t for t in self.special_tokens if t in checked],
                            cut_before=[t for t in self.special_tokens if t in allowed])
        buffer = ""
        for text in iterable:
            buffer += text
            if len(buffer) >= _STREAM_CHARS:
                cut = last_cut(buffer, finder)
                if cut:
                    yield from self.encode(buffer[:cut], allowed_special=allowed,
                                           disallowed_special=disallowed_special)
                    buffer = buffer[cut:]
        if buffer:
            yield from self.encode(buffer, allowed_special=allowed, disallowed_special=disallowed_special)

    # -- decoding ------------------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Token ids (a list, or a numpy array / torch tensor) -> the exact bytes they stand for. An unknown
        id is an error."""
        vocab = self.vocab
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        try:
            return b"".join([vocab[i] for i in ids])
        except (KeyError, TypeError):
            bad = next(i for i in ids if not isinstance(i, int) or i not in vocab)
            raise ValueError(f"unknown token id {bad!r}: this tokenizer has ids 0..{max(vocab)}") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids -> text; bytes that are not valid UTF-8 become the replacement character U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # -- files (the formats themselves are in formats.py, which does not know this class) ----------------

    def parts(self) -> TokenizerParts:
        """What the file formats store: vocabulary, merges, special tokens, pattern, chat template."""
        return TokenizerParts(self.vocab, self.merges, self.special_tokens, self.pattern, self.chat_template)

    @classmethod
    def from_parts(cls, parts: TokenizerParts) -> Tokenizer:
        return cls(parts.vocab, parts.merges, parts.special_tokens, parts.pattern, parts.chat_template)

    def save(self, directory) -> None:
        """Write this tokenizer in gator's own format (tokenizer.gator.json in `directory`)."""
        formats.write_gator(self.parts(), directory)

    @classmethod
    def load(cls, path) -> Tokenizer:
        """THE way to read a tokenizer: a directory saved by `save` (or its tokenizer.gator.json), a directory
        with GPT-2's vocab.json + merges.txt, or a Hugging Face tokenizer.json (or its directory)."""
        parts = formats.read_any(path)
        try:
            return cls.from_parts(parts)
        except ValueError as err:
            raise ValueError(f"{parts.source} is corrupt: {err}; {formats.GATOR_FIX}") from None

    @classmethod
    def from_gpt2_files(cls, vocab_json, merges_txt, special_tokens: list[str] | None = None) -> Tokenizer:
        """Read GPT-2's encoder.json/vocab.json and vocab.bpe/merges.txt."""
        return cls.from_parts(formats.read_gpt2(vocab_json, merges_txt, special_tokens))

    def to_tiktoken(self):
        """A tiktoken.Encoding with the same vocabulary, merges and special tokens."""
        return formats.to_tiktoken(self.vocab, self.merges, self.special_ids, self.pattern)

    def save_hf(self, directory) -> None:
        """Write a Hugging Face tokenizer (tokenizer.json + tokenizer_config.json) to `directory`; a chat
        template goes into tokenizer_config.json as Jinja."""
        formats.write_hf(self.parts(), directory)


_SURROGATE = re.compile("[\ud800-\udfff]")


def fix_surrogates(text: str) -> str:
    """What tiktoken does with text that is not valid Unicode: a surrogate pair (two UTF-16 halves, as a
    JSON "\\ud83d\\ude00" escape produces) becomes its character, a lone surrogate U+FFFD."""
    if text.isascii() or not _SURROGATE.search(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
