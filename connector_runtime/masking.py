"""Secret values never leave the process: every text that could carry one is masked.

Connectors register their secret values when a sync starts (`register`: every string in
them, at any depth; numbers are not masked); `mask` replaces each with `***` in any
text (an alert, a stack trace, a log line) before it is stored or
printed. A secret is masked in every rendering it commonly takes in a text, all computed
once when it is registered and matched by one precompiled regex (a trie of the
renderings: at each position the longest one wins, so no longer form leaves a tail):

- raw;
- JSON-escaped, as `json.dumps` writes it with and without `ensure_ascii` and as orjson
  writes it; also with upper-case `\\uXXXX` hex, with `\\/` for `/` (PHP) and with
  `\\u003c` for `<>&` (Go);
- `repr`-escaped: Python's `repr` and `ascii` of the str (with and without `\\'`: which
  quote needs escaping depends on the whole text around it) and `repr` of its UTF-8 bytes;
- URL-encoded: `quote` (safe `/` or nothing), `quote_plus`, and JavaScript's
  `encodeURIComponent` and `encodeURI` safe sets, with upper- and lower-case hex;
- base64 of its UTF-8 bytes, standard and URL-safe, with and without padding; and for
  base64 of a longer text in which the secret starts at an offset, the characters that
  depend on the secret's bytes alone at each of the three alignments (at least
  `MIN_BASE64_PART` of them). The one or two characters at either edge of such a part
  also hold bits of the neighbouring bytes and stay: at most 4 bits of the secret's
  first and last byte;
- each JSON- or repr-escaped form above JSON-escaped once more (JSON holding JSON text,
  or a repr).

A secret holding line breaks is also registered line by line (lines of `MIN_LENGTH` or
more characters): output is read, logged and kept one line at a time.

Not covered: other encodings of an encoding (base64 of JSON, URL-encoded JSON, three
levels of escapes...), hex, HTML entities, MIME base64 broken into lines, other
character sets than UTF-8, and a secret cut in two by another text.

`excerpt` masks a text and then shortens it: use it wherever a text that may hold a
secret is cut, since a cut through a secret would leave a prefix `mask` cannot know.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

import orjson

MASK = "***"
MIN_LENGTH = 3  # shorter values ("1", "on") would mask ordinary text without protecting much
MIN_BASE64_PART = 6  # shorter middles of an offset base64 would mask ordinary words
CUT = "… ({cut} more characters cut)"  # `excerpt`'s note for a stored text

_secrets: set[str] = set()  # replaced, never changed in place (tests may restore it)
_lock = threading.Lock()


@dataclass(frozen=True)
class _Compiled:
    secrets: frozenset[str]
    pattern: re.Pattern[str] | None


_compiled = _Compiled(frozenset(), None)
_renderings: dict[str, frozenset[str]] = {}  # cache: secret → its renderings


def register(values: Any) -> None:
    """Remember every string inside `values` (a str, or dicts and lists nested to any
    depth) as secret: `MIN_LENGTH` characters or more, see `_secret_values`.

    Numbers, booleans and null are not registered. A secret may be any JSON value, but a
    number is mostly a setting (`limit: 100`), and one that is secret, a 4-digit PIN, is
    too short to mask without masking every `1234` in ordinary text; its digits would also
    have to be found inside longer numbers, dates and ids. Write a secret number as a
    string to have it masked (when long enough)."""
    found = _secret_values(values)
    global _secrets
    with _lock:
        if not found <= _secrets:
            _secrets = _secrets | found
    _pattern()  # compile now, not in the first log line


def mask(value: Any) -> Any:
    """`value` with every registered secret replaced; recurses into lists, tuples and dicts
    (their keys too). Idempotent: masking a masked text changes nothing."""
    if isinstance(value, str):
        return _substituted(_pattern(), value)
    if isinstance(value, list):
        return [mask(v) for v in value]
    if isinstance(value, tuple):
        return tuple(mask(v) for v in value)
    if isinstance(value, dict):
        return {mask(k): mask(v) for k, v in value.items()}
    return value


def excerpt(value: Any, limit: int, *, one_line: bool = False, note: str = "…") -> str:
    """`str(value)` masked, then shortened to at most `limit` characters (never fewer than
    the note's): `one_line` first joins its lines and runs of whitespace with one space;
    a text that is cut ends with `note`, whose `{cut}` is the number of characters cut.
    The result is masked again: joining lines may put a secret back together."""
    text = mask(value if isinstance(value, str) else str(value))
    if one_line:
        text = " ".join(text.split())
    if len(text) > limit:
        room = max(0, limit - len(note.replace("{cut}", str(len(text)))))
        text = text[:room] + note.replace("{cut}", str(len(text) - room))
    return mask(text)


def excerpt_frames(frames: list | None, limit: int, *, frame_limit: int | None = None) -> list:
    """A stack trace (strings or Lambda's `[file, line, function, code]` lists) masked,
    each string cut to `frame_limit` characters, then whole frames kept from the top while
    the trace's JSON stays within `limit` characters; a last line says how many were cut."""
    kept: list = []
    size = 2  # the brackets; each frame adds its JSON and a separator
    frames = list(frames or [])
    for index, frame in enumerate(frames):
        frame = _frame_excerpt(frame, frame_limit or limit)
        size += len(json.dumps(frame, ensure_ascii=False, default=str)) + 2
        if size > limit - 40:  # room for the note
            kept.append(f"… ({len(frames) - index} more frames cut)")
            break
        kept.append(frame)
    return kept


class Masker:
    """Masks the renderings of its own values only, besides the registered secrets: for
    values secret to one place (an HTTP function's header words and query values). Its
    values are taken as `register` takes them: every string at any depth, no numbers."""

    def __init__(self, values: Any) -> None:
        forms = set().union(*map(renderings, _secret_values(values)))
        self._pattern = re.compile(_trie_regex(forms)) if forms else None

    def mask(self, text: str) -> str:
        """`text` with this masker's values and every registered secret masked."""
        while True:
            masked = _substituted(self._pattern, mask(text))
            if masked == text:
                return text
            text = masked


def renderings(secret: str) -> frozenset[str]:
    """Every text `mask` replaces for `secret` (see the module's docstring)."""
    forms = _renderings.get(secret)
    if forms is None:
        forms = frozenset(f for f in _all_forms(secret) if f) | {secret}
        _renderings[secret] = forms
    return forms


def structlog_processor(_logger: Any, _method: str, event_dict: dict) -> dict:
    """A structlog processor that masks every value of a log event; a value of another
    type than str, number, list or dict is masked as the `repr` a renderer would show."""
    if not _secrets:
        return event_dict
    return {k: mask(v if isinstance(v, _PLAIN) else repr(v)) for k, v in event_dict.items()}


_PLAIN = (str, int, float, bool, type(None), list, tuple, dict)


# -- the renderings of a secret -----------------------------------------------------------

_JSON_SHORT = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_JSON_SHORT |= {"\b": "\\b", "\f": "\\f"}
_HTML_SAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}
_URL_SAFE_SETS = ("", "/", "-_.!~*'()", "-_.!~*'();/?:@&=+$,#")  # "", quote, JS, encodeURI
_PERCENT = re.compile(r"%[0-9A-F]{2}")


def _all_forms(secret: str) -> set[str]:
    escaped = _json_forms(secret) | _repr_forms(secret)
    # JSON holding an escaped text (an upstream's JSON body inside an error object)
    nested = {
        json.dumps(form, ensure_ascii=ascii_only)[1:-1]
        for form in escaped - {secret}
        for ascii_only in (True, False)
    }
    return {secret} | escaped | nested | _url_forms(secret) | _base64_forms(_utf8(secret))


def _json_forms(secret: str) -> set[str]:
    forms = {
        json.dumps(secret, ensure_ascii=False)[1:-1],
        json.dumps(secret)[1:-1],
        _json_escaped(secret, ascii_only=True, upper=True),
    }
    with contextlib.suppress(TypeError):  # orjson refuses lone surrogates
        forms.add(orjson.dumps(secret).decode()[1:-1])
    html_safe = _json_escaped(secret, ascii_only=True, html_safe=True)
    return forms | {html_safe} | {f.replace("/", "\\/") for f in forms if "/" in f}


def _json_escaped(
    text: str, *, ascii_only: bool, upper: bool = False, html_safe: bool = False
) -> str:
    def code(point: int) -> str:
        hex_digits = f"{point:04x}"
        return "\\u" + (hex_digits.upper() if upper else hex_digits)

    out = []
    for ch in text:
        point = ord(ch)
        if ch in _JSON_SHORT:
            out.append(_JSON_SHORT[ch])
        elif html_safe and ch in _HTML_SAFE:
            out.append(_HTML_SAFE[ch])
        elif point < 0x20 or (ascii_only and point > 0x7E):
            if point > 0xFFFF:
                point -= 0x10000
                out.append(code(0xD800 + (point >> 10)) + code(0xDC00 + (point & 0x3FF)))
            else:
                out.append(code(point))
        else:
            out.append(ch)
    return "".join(out)


def _repr_forms(secret: str) -> set[str]:
    """Python escapes each character on its own; only the quote escaped depends on the
    text around it, so both variants are kept."""
    forms = set()
    for escape in (repr, ascii):
        plain = [escape(ch)[1:-1] for ch in secret]
        forms.add("".join(plain))
        forms.add("".join("\\'" if ch == "'" else e for ch, e in zip(secret, plain, strict=True)))
    data = _utf8(secret)
    as_bytes = [repr(bytes([b]))[2:-1] for b in data]
    forms.add("".join(as_bytes))
    forms.add("".join("\\'" if b == 0x27 else e for b, e in zip(data, as_bytes, strict=True)))
    return forms


def _url_forms(secret: str) -> set[str]:
    data = _utf8(secret)
    encoded = {quote(data, safe=safe) for safe in _URL_SAFE_SETS}
    encoded |= {quote_plus(data, safe=safe) for safe in _URL_SAFE_SETS[:2]}
    return encoded | {_PERCENT.sub(lambda m: m[0].lower(), e) for e in encoded}


def _base64_forms(data: bytes) -> set[str]:
    forms = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(data).decode()
        forms |= {whole, whole.rstrip("=")}
        for offset in range(3):  # the secret's first byte at this position in a group of 3
            text = encode(bytes(offset) + data + bytes(2)).decode()
            first = -(-8 * offset // 6)  # the first character made of the secret's bits only
            end = 8 * (offset + len(data)) // 6  # past the last such character
            if end - first >= MIN_BASE64_PART:
                forms.add(text[first:end])
    return forms


def _utf8(text: str) -> bytes:
    """UTF-8; a lone surrogate as the byte it stands for in an environment value
    (`surrogateescape`), else as the three bytes `surrogatepass` writes."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return b"".join(
            _utf8(ch) if ch < "\ud800" or ch > "\udfff" else _surrogate(ch) for ch in text
        )


def _surrogate(ch: str) -> bytes:
    try:
        return ch.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return ch.encode("utf-8", "surrogatepass")


# -- matching -------------------------------------------------------------------------------


def _secret_values(values: Any) -> set[str]:
    """The strings in `values` and the lines of those holding line breaks, long enough."""
    found = set()
    for value in _strings(values):
        found.add(value)
        found.update(line for line in value.splitlines() if line.strip())
    return {v for v in found if len(v) >= MIN_LENGTH}


def _substituted(pattern: re.Pattern[str] | None, text: str) -> str:
    if pattern is None:
        return text
    while True:  # a secret holding `*` may form anew around a mask: until none is left
        masked = pattern.sub(MASK, text)
        if masked == text:
            return text
        text = masked


def _pattern() -> re.Pattern[str] | None:
    compiled = _compiled
    if compiled.secrets != _secrets:
        compiled = _compile()
    return compiled.pattern


def _compile() -> _Compiled:
    global _compiled
    with _lock:
        secrets = frozenset(_secrets)
        if _compiled.secrets != secrets:
            forms = set().union(*(renderings(s) for s in secrets)) if secrets else set()
            pattern = re.compile(_trie_regex(forms)) if forms else None
            _compiled = _Compiled(secrets, pattern)
        return _compiled


def _trie_regex(words: set[str]) -> str:
    """One regex matching each of `words`; at a position the longest word wins (greedy)."""
    trie: dict = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}  # a word ends here
    return _node_regex(trie)


def _node_regex(node: dict) -> str:
    branches = []
    for ch, child in node.items():
        if ch == "":
            continue
        literal = ch
        while len(child) == 1 and "" not in child:  # a chain without choices: one literal
            ((next_ch, child),) = child.items()
            literal += next_ch
        branches.append(re.escape(literal) + _node_regex(child))
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    if "" not in node:
        return body
    return f"(?:{body})?" if len(branches) == 1 else body + "?"


def _frame_excerpt(frame: Any, limit: int) -> Any:
    if isinstance(frame, str):
        return excerpt(frame, limit)
    if isinstance(frame, list):
        return [_frame_excerpt(part, limit) for part in frame]
    return mask(frame)


def _strings(values: Any):
    if isinstance(values, str):
        yield values
    elif isinstance(values, dict):
        for v in values.values():
            yield from _strings(v)
    elif isinstance(values, (list, tuple)):
        for v in values:
            yield from _strings(v)
