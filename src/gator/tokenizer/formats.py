"""Tokenizer files: gator's own JSON, GPT-2's vocab.json + merges.txt, Hugging Face tokenizer.json, tiktoken.

Every format stores the same three things: the vocabulary (id -> bytes), the merges in order, and the
special tokens (plus, where the format has a place for it, the pre-tokenizer regex and the chat template).
This module reads and writes them as plain data (`TokenizerParts`) and knows nothing of the `Tokenizer`
class: `Tokenizer.load` builds a tokenizer from what `read_any` finds, and `Tokenizer.save`/`save_hf`
hand their parts to the writers here. The dependency runs one way, bpe.py -> formats.py.

Byte strings are not always valid text, so GPT-2 stored each byte as a printable Unicode character
(`bytes_to_unicode`): printable Latin-1 bytes stand for themselves and the rest (space, control bytes,
...) are shifted to U+0100 and up, which is why a leading space shows as "Ġ" in GPT-2 and Hugging Face
vocabularies. Gator's own format uses the same mapping, so its JSON is readable and exact.

tiktoken keeps no merge list: it ranks byte strings, and merges the adjacent pair whose concatenation has
the lowest rank. That gives the same result as replaying the merges when each merge makes a new token,
in order, which `tiktoken_ranks` checks before a fast path is built. tiktoken also runs the pattern in
its own regex engine, whose Unicode tables are older than those of Python's `regex` module: the two
disagree about a few thousand recently assigned characters (`engine_gap`), and text containing one of
them is encoded by the Python path so that `encode` always gives the reference ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import regex

from .chat import ChatTemplate, hf_jinja, hf_normalizer
from .patterns import pattern_name, resolve_pattern

FORMAT = "gator-bpe"
FILE = "tokenizer.gator.json"
GATOR_FIX = "re-save it with Tokenizer.save or retrain it with `gator tokenizer train`"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 bytes to printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shift = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shift)
            shift += 1
    return table


def to_printable(token: bytes) -> str:
    """Token bytes -> GPT-2's printable form (b" the" -> "Ġthe")."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def from_printable(text: str, where: str) -> bytes:
    """GPT-2's printable form -> token bytes; `where` names the file in the error for a bad character."""
    inverse = _unicode_to_bytes()
    try:
        return bytes(inverse[ch] for ch in text)
    except KeyError as err:
        raise ValueError(f"{where}: token {text!r} has character {err.args[0]!r}, which is not one of "
                         "GPT-2's 256 byte characters; the file is corrupt or not byte-level BPE") from None


@lru_cache(maxsize=1)
def _unicode_to_bytes() -> dict[str, int]:
    return {ch: b for b, ch in bytes_to_unicode().items()}


# -- what every format stores -----------------------------------------------------------------------------


@dataclass
class TokenizerParts:
    """The contents of a tokenizer file: `vocab` {id: bytes} (special tokens included, except those that are
    to get the next free ids), the merges in order, the special tokens, the pre-tokenizer `pattern` (a regex),
    and the chat template if there is one. `Tokenizer.from_parts` builds a tokenizer from them."""

    vocab: dict[int, bytes]
    merges: list[tuple[bytes, bytes]]
    special_tokens: list[str]
    pattern: str
    chat_template: ChatTemplate | None = None
    source: str = ""  # the file read, for error messages

    @property
    def special_ids(self) -> dict[str, int]:
        id_of = {token: i for i, token in self.vocab.items()}
        return {s: id_of[s.encode("utf-8")] for s in self.special_tokens}


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file through a temporary file and a rename, so a crash never leaves half a file."""
    from gator.outputs import atomic_write  # the umask's normal mode, not mkstemp's 0600

    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


# -- gator's own format ---------------------------------------------------------------------------------


def write_gator(parts: TokenizerParts, directory) -> Path:
    """Write tokenizer.gator.json into `directory`: pattern, special tokens, vocabulary, merges as id pairs."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    id_of = {token: i for i, token in parts.vocab.items()}
    special_ids = parts.special_ids
    special = set(special_ids.values())
    data = {
        "format": FORMAT,
        "version": 1,
        "pattern": pattern_name(parts.pattern),
        "special_tokens": special_ids,
        "vocab": {str(i): to_printable(token) for i, token in sorted(parts.vocab.items()) if i not in special},
        "merges": [[id_of[a], id_of[b]] for a, b in parts.merges],
    }
    if parts.chat_template is not None:
        data["chat_template"] = parts.chat_template.to_dict()
    write_text_atomic(path / FILE, json.dumps(data, ensure_ascii=False, indent=0))
    return path / FILE


def read_gator(path: Path) -> TokenizerParts:
    """Read tokenizer.gator.json; anything wrong in it is a ValueError that names the file and the fix."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is corrupt: not valid JSON ({err}); {GATOR_FIX}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a gator tokenizer (no \"format\": \"{FORMAT}\"); {GATOR_FIX}")
    if data.get("version") != 1:
        raise ValueError(f"{path} has format version {data.get('version')!r}; this gator reads version 1; "
                         f"{GATOR_FIX}")
    missing = [k for k in ("pattern", "special_tokens", "vocab", "merges") if k not in data]
    if missing:
        raise ValueError(f"{path} is corrupt: missing field(s) {missing}; {GATOR_FIX}")
    try:
        vocab = {int(i): from_printable(t, str(path)) for i, t in data["vocab"].items()}
        specials = {str(s): int(i) for s, i in data["special_tokens"].items()}
        for token, i in specials.items():
            vocab[i] = token.encode("utf-8")
        merges = []
        for number, (a, b) in enumerate(data["merges"]):
            if a not in vocab or b not in vocab:
                raise ValueError(f"merge {number} refers to token id {a if a not in vocab else b}, "
                                 "which is not in the vocabulary")
            merges.append((vocab[a], vocab[b]))
        template = data.get("chat_template")
        template = None if template is None else ChatTemplate.from_dict(template)
        return TokenizerParts(vocab, merges, list(specials), resolve_pattern(data["pattern"]), template, str(path))
    except (TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{path} is corrupt: {err}; {GATOR_FIX}") from None


# -- GPT-2 files ----------------------------------------------------------------------------------------


def read_gpt2(vocab_json, merges_txt, special_tokens: list[str] | None = None) -> TokenizerParts:
    """Read GPT-2's vocabulary (printable token -> id) and merges (one "a b" pair per line)."""
    try:
        encoder = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{vocab_json} is not valid JSON ({err}); give GPT-2's vocab.json/encoder.json") from None
    special_tokens = list(special_tokens or [])
    vocab = {}
    for token, i in encoder.items():
        vocab[int(i)] = token.encode("utf-8") if token in special_tokens else from_printable(token, str(vocab_json))
    merges = []
    for number, line in enumerate(Path(merges_txt).read_text(encoding="utf-8").splitlines(), start=1):
        if not line or line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{merges_txt}, line {number}: expected two tokens separated by one space, "
                             f"got {line!r}; give GPT-2's merges.txt/vocab.bpe")
        merges.append((from_printable(parts[0], str(merges_txt)), from_printable(parts[1], str(merges_txt))))
    return TokenizerParts(vocab, merges, special_tokens, "gpt2", source=str(vocab_json))


# -- any directory or file: the one place that decides which format a path holds ---------------------------


def read_any(path) -> TokenizerParts:
    """The tokenizer at `path`: gator's own directory or file, a directory with GPT-2's vocab.json and
    merges.txt, or a Hugging Face tokenizer.json (or a directory holding one), in that order of preference."""
    path = Path(path)
    if path.is_dir():
        if (path / FILE).is_file():
            return read_gator(path / FILE)
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            specials = ["<|endoftext|>"] if "<|endoftext|>" in (path / "vocab.json").read_text("utf-8") else []
            return read_gpt2(path / "vocab.json", path / "merges.txt", specials)
        if (path / "tokenizer.json").is_file():
            return read_hf(path / "tokenizer.json")
    elif path.is_file():
        return read_hf(path) if path.name == "tokenizer.json" else read_gator(path)
    raise FileNotFoundError(f"no tokenizer at {path} (no gator tokenizer, GPT-2 files or tokenizer.json): expected "
                            f"a directory with {FILE} (gator), vocab.json + merges.txt (GPT-2) or tokenizer.json "
                            "(Hugging Face); train one with `gator tokenizer train` or save one with "
                            "Tokenizer.save(directory)")


# -- tiktoken -------------------------------------------------------------------------------------------


def tiktoken_ranks(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]]) -> dict[bytes, int]:
    """{token bytes: id} for tiktoken, or ValueError when tiktoken would encode differently than the merges.

    tiktoken merges by rank of the merged bytes, so the merges must make new tokens with increasing ids.
    Tokens that no merge makes (other than single bytes and special tokens) are left out: the merges never
    produce them, so tiktoken must not either."""
    id_of = {token: i for i, token in vocab.items()}
    ranks = {bytes([b]): id_of[bytes([b])] for b in range(256)}
    previous = -1
    for rank, (a, b) in enumerate(merges):
        i = id_of[a + b]
        if a + b in ranks or i <= previous:
            raise ValueError(f"merge {rank} ({a!r}, {b!r}) does not make a new token with a higher id than "
                             "the merge before it, so tiktoken's rank order would differ from the merge order")
        ranks[a + b] = previous = i
    return ranks


def to_tiktoken(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], special_ids: dict[str, int],
                pattern: str, name: str = "gator"):
    """Build a tiktoken.Encoding that encodes exactly like these merges, special tokens and pattern."""
    import tiktoken

    ranks = tiktoken_ranks(vocab, merges)
    try:
        return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special_ids)
    except ValueError as err:  # tiktoken's regex engine could not compile the pattern
        raise ValueError(f"tiktoken cannot use pattern {pattern!r}: {err}") from None


_CLASS_GAPS: dict[str, frozenset[str]] = {}


def _class_gap(char_class: str, everything: str) -> frozenset[str]:
    """The characters that tiktoken's regex engine and the `regex` module put in different classes."""
    import tiktoken

    probe = tiktoken.Encoding("probe", pat_str=char_class + "+", special_tokens={},
                              mergeable_ranks={bytes([b]): b for b in range(256)})
    theirs = bytes(probe.encode_ordinary(everything)).decode("utf-8")  # only the matched text is encoded
    ours = "".join(regex.findall(char_class + "+", everything))
    return frozenset(theirs).symmetric_difference(ours)


@cache
def engine_gap(pattern: str) -> frozenset[str]:
    """Characters on which tiktoken and the `regex` module may pre-tokenize `pattern` differently: those
    that the two engines' Unicode tables classify differently, for every class the pattern names.
    Found once per process by running each class over all of Unicode in both engines (a fraction of a
    second)."""
    classes = {r"\s", r"\d", r"\w"} | {r"\p" + c for c in regex.findall(r"\\[pP](\{[^}]*\}|[A-Za-z])", pattern)}
    missing = sorted(classes - _CLASS_GAPS.keys())
    if missing:
        everything = "".join(map(chr, [*range(0xD800), *range(0xE000, 0x110000)]))  # all but surrogates
        for char_class in missing:
            _CLASS_GAPS[char_class] = _class_gap(char_class, everything)
    return frozenset().union(*(_CLASS_GAPS[c] for c in classes))


# -- Hugging Face tokenizer.json --------------------------------------------------------------------------


def hf_tokenizer_json(parts: TokenizerParts) -> dict:
    """The tokenizer.json that the `tokenizers` library (and transformers' fast tokenizers) load. With a chat
    template it has the normalizer that undoes the template's escaping of content (see chat.py)."""
    special_ids = parts.special_ids
    ordinary = {to_printable(token): i for i, token in parts.vocab.items() if i not in special_ids.values()}
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for s, i in special_ids.items()]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": hf_normalizer(parts.special_tokens) if parts.chat_template else None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": parts.pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": ordinary,
                  "merges": [f"{to_printable(a)} {to_printable(b)}" for a, b in parts.merges]},
    }


def write_hf(parts: TokenizerParts, directory) -> Path:
    """Write tokenizer.json + tokenizer_config.json (with the chat template as Jinja, if there is one)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path / "tokenizer.json", json.dumps(hf_tokenizer_json(parts), ensure_ascii=False, indent=1))
    config: dict = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                    "model_max_length": 1 << 30}
    if "<|endoftext|>" in parts.special_tokens:
        config.update(bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    config["additional_special_tokens"] = [s for s in parts.special_tokens if s != "<|endoftext|>"]
    if parts.chat_template is not None:
        config["chat_template"] = hf_jinja(parts.chat_template, parts.special_tokens)
        config[CONFIG_CHAT_KEY] = parts.chat_template.to_dict()
    write_text_atomic(path / "tokenizer_config.json", json.dumps(config, indent=1))
    return path / "tokenizer.json"


CONFIG_CHAT_KEY = "gator_chat_template"  # the template's markers, so that reading the export back restores it


def read_hf(path) -> TokenizerParts:
    """Read a byte-level BPE tokenizer.json (the kind write_hf writes, and GPT-2/Llama-3 style ones)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); give a Hugging Face tokenizer.json") from None
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise ValueError(f"{path}: model type {model.get('type')!r} is not BPE; gator reads byte-level BPE only")
    specials = {t["content"]: t["id"] for t in data.get("added_tokens", []) if t.get("special")}
    template = _hf_chat_template(path.parent / "tokenizer_config.json", list(specials))
    gator_normalizer = template is not None and data.get("normalizer") == hf_normalizer(list(specials))
    unsupported = [k for k in ("normalizer",) if data.get(k) and not gator_normalizer] + [
        k for k in ("ignore_merges", "byte_fallback", "dropout") if model.get(k)]
    if unsupported:
        raise ValueError(f"{path} uses {', '.join(unsupported)}, which gator's BPE does not implement; "
                         "use the tokenizers library for this tokenizer")
    vocab = {i: (s.encode("utf-8") if s in specials else from_printable(s, str(path)))
             for s, i in model["vocab"].items()}
    vocab.update({i: s.encode("utf-8") for s, i in specials.items()})
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    merges = [(from_printable(a, str(path)), from_printable(b, str(path))) for a, b in merges]
    return TokenizerParts(vocab, merges, list(specials), _hf_pattern(data.get("pre_tokenizer")), template, str(path))


def _hf_chat_template(config_path: Path, specials: list[str]) -> ChatTemplate | None:
    """The chat template gator wrote into tokenizer_config.json, if its Jinja is still gator's own."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        template = ChatTemplate.from_dict(config[CONFIG_CHAT_KEY])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return template if config.get("chat_template") == hf_jinja(template, specials) else None


def _hf_pattern(pre) -> str:
    """The Split regex inside a pre_tokenizer, or GPT-2's when it is a plain ByteLevel with use_regex."""
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre] if pre else []
    if any(step.get("type") == "ByteLevel" and step.get("add_prefix_space") for step in steps):
        raise ValueError("tokenizer.json adds a space before the text (ByteLevel add_prefix_space), which "
                         "gator does not do; use the tokenizers library for this tokenizer")
    for step in steps:
        if step.get("type") == "Split" and "Regex" in step.get("pattern", {}):
            return step["pattern"]["Regex"]
        if step.get("type") == "ByteLevel" and step.get("use_regex", True):
            return "gpt2"
    raise ValueError("tokenizer.json has no pre-tokenizer regex that gator understands (Split or ByteLevel)")
