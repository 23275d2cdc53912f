"""Pre-tokenization: the regex that cuts text into pieces before BPE sees it, and the special-token split.

Byte-level BPE never merges across the boundaries of a *pre-token*. GPT-2 introduced the idea (Radford
et al., 2019, "Language Models are Unsupervised Multitask Learners", section 2.2): a regex splits text
into words, numbers, runs of punctuation and runs of whitespace, so that "dog." and "dog!" share the
token " dog" instead of learning one token per punctuation variant. Later OpenAI encodings changed the
regex: cl100k (GPT-4) splits digits into groups of at most three and lets a newline follow
punctuation; o200k (GPT-4o) also splits CamelCase words and handles contractions case-insensitively.

The strings below are exactly the ones tiktoken uses, so gator's pure-Python path and tiktoken's fast
path cut text the same way. `++` and `*+` are possessive quantifiers: they never give back what they
matched, which makes the regex faster without changing its result. For GPT-2 the classic,
easier-to-read form is::

    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+

Special tokens (such as ``<|endoftext|>``) are cut out of the text first; they are never
pre-tokenized, never merged with their neighbours, and are matched longest first.

This module also knows where a long text may be cut into independent chunks (`safe_cuts`), which is
what lets training count pre-tokens in parallel and `Tokenizer.encode_iterable` stream a large file.
"""

from __future__ import annotations

import regex

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN, "cl100k": GPT4_PATTERN, "o200k": O200K_PATTERN}


def resolve_pattern(pattern: str) -> str:
    """Return the regex for a pattern name (gpt2, gpt4/cl100k, o200k) or check and return a regex string."""
    if pattern in PATTERNS:
        return PATTERNS[pattern]
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"pattern must be one of {sorted(PATTERNS)} or a regex string, got {pattern!r}")
    try:
        compiled = regex.compile(pattern)
    except regex.error as err:
        raise ValueError(f"pattern {pattern!r} is not a valid regex ({err}); use one of {sorted(PATTERNS)}") from None
    if compiled.search("") is not None:
        raise ValueError(f"pattern {pattern!r} matches the empty string, so it would cut text into nothing; "
                         "make every alternative consume at least one character")
    return pattern


def pattern_name(pattern: str) -> str:
    """The short name of a built-in pattern regex, or the regex itself."""
    for name, value in PATTERNS.items():
        if value == pattern:
            return name
    return pattern


def check_special_tokens(special_tokens) -> list[str]:
    """Validate special tokens: a list of non-empty strings, none repeated."""
    if isinstance(special_tokens, str):
        raise ValueError(f"special_tokens must be a list of strings, e.g. [{special_tokens!r}], not one string")
    tokens = list(special_tokens or [])
    for token in tokens:
        if not isinstance(token, str) or not token:
            raise ValueError(f"special token {token!r} is empty or not a string; give non-empty strings "
                             "such as '<|endoftext|>'")
        if any("\ud800" <= ch <= "\udfff" for ch in token):
            raise ValueError(f"special token {token!r} contains a lone surrogate, which is not text; give valid "
                             "Unicode")
    repeated = sorted({t for t in tokens if tokens.count(t) > 1})
    if repeated:
        raise ValueError(f"special token(s) {repeated} given more than once; list each special token once")
    return tokens


def special_regex(special_tokens: list[str]) -> regex.Pattern | None:
    """A regex that matches any special token, longest first (so '<|a|><|a|>' beats '<|a|>')."""
    if not special_tokens:
        return None
    ordered = sorted(special_tokens, key=len, reverse=True)
    return regex.compile("|".join(regex.escape(t) for t in ordered))


def split_on_special(text: str, special: regex.Pattern | None) -> list[tuple[str, bool]]:
    """Cut text into (piece, is_special) pairs, in order; empty ordinary pieces are left out."""
    if special is None:
        return [(text, False)] if text else []
    parts: list[tuple[str, bool]] = []
    start = 0
    for match in special.finditer(text):
        if match.start() > start:
            parts.append((text[start:match.start()], False))
        parts.append((match.group(), True))
        start = match.end()
    if start < len(text):
        parts.append((text[start:], False))
    return parts


# Where may a long text be cut so that each part, split on special tokens and pre-tokenized on its own,
# gives exactly the pieces of the whole text? Three kinds of place:
#
# 1. Right before a special token, provided no special token contains the first character of a special
#    token anywhere but at its start: then no special-token match can straddle the cut, and the ordinary
#    text before it ends there in both cases.
# 2. For the built-in patterns, after a newline that follows a non-space character and precedes a letter
#    or digit ("end.\nNext"). No gpt2, gpt4 or o200k pre-token runs across such a newline: whitespace runs
#    stop at the letter, "punctuation + newlines" stops at the letter, and a word may not start with a
#    newline. The pre-token that ends at the newline is the same whether or not text follows it.
# 3. For the built-in patterns, before a space that sits between two letters ("word next"): a word ends at
#    its last letter, with or without the text after it, and " next" starts a new pre-token either way.
#
# Rules 2 and 3 also need special tokens without newlines (2) or spaces (3), so that no special token
# can straddle such a cut. A custom regex gets only rule 1: nothing is known about what it may match.
_NEWLINE_CUT = r"(?<=\S\n)(?=[\p{L}\p{N}])"
_SPACE_CUT = r"(?<=\p{L})(?= \p{L})"


def cut_finder(pattern: str, special_tokens: list[str], cut_before: list[str] | None = None) -> regex.Pattern | None:
    """A regex whose (empty) matches are the positions where text may be cut, or None if there are none.
    `special_tokens` are those looked for in the text (split off, or checked for); rule 1 cuts only before
    those in `cut_before` (default: all of them), the ones that are split off."""
    alternatives = []
    cut_before = special_tokens if cut_before is None else cut_before
    firsts = {t[0] for t in cut_before}
    if cut_before and not any(ch in firsts for t in special_tokens for ch in t[1:]):
        alternatives.append("(?=" + "|".join(regex.escape(t) for t in cut_before) + ")")
    if pattern in PATTERNS.values():
        if not any("\n" in t for t in special_tokens):
            alternatives.append(_NEWLINE_CUT)
        if not any(" " in t for t in special_tokens):
            alternatives.append(_SPACE_CUT)
    return regex.compile("|".join(alternatives)) if alternatives else None


def last_cut(text: str, finder: regex.Pattern | None) -> int:
    """The last position (> 0) where `text` may be cut, or 0 if there is none."""
    if finder is None:
        return 0
    # The `regex` module can search backwards, so the last cut is found without scanning the whole text.
    match = regex.search(finder.pattern, text, flags=finder.flags | regex.REVERSE, pos=1)
    return match.start() if match else 0
