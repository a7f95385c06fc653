"""`connector_runtime.masking`: every rendering of a secret is masked, and cutting a text
never leaves part of one.

The renderings a secret is masked in: raw; JSON-escaped (json.dumps with and without
ensure_ascii, orjson); repr-escaped (repr and ascii of the str, repr of its bytes);
URL-encoded (quote, quote_plus); base64 (standard and URL-safe, with and without padding,
and inside a longer base64 text at each of the three alignments); JSON of a JSON- or
repr-escaped form.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from urllib.parse import quote, quote_plus

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector_runtime import masking
from connector_runtime.masking import MASK


@contextlib.contextmanager
def registered(*secrets: str):
    """`secrets` registered inside the block only."""
    before = masking._secrets
    masking.register(list(secrets))
    try:
        yield
    finally:
        masking._secrets = before


@pytest.fixture(autouse=True)
def forget_secrets(monkeypatch):
    monkeypatch.setattr(masking, "_secrets", masking._secrets)


SECRET = "p@ss w/\"q'\\é😀"  # space, slash, both quotes, a backslash, non-ASCII, astral


def b64_forms(data: bytes) -> list[str]:
    forms = []
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(data).decode()
        forms += [whole, whole.rstrip("=")]
    return forms


def renderings(secret: str) -> dict[str, str]:
    """The renderings a test expects masked, by name; those that cannot be made (orjson
    and quote refuse lone surrogates) are left out."""
    made = {
        "raw": lambda: secret,
        "json": lambda: json.dumps(secret)[1:-1],
        "json, not ensure_ascii": lambda: json.dumps(secret, ensure_ascii=False)[1:-1],
        "orjson": lambda: orjson.dumps(secret).decode()[1:-1],
        "repr": lambda: repr(secret)[1:-1],
        "repr in a dict": lambda: repr({"token": secret, "note": 'it\'s "here"'}),
        "KeyError": lambda: str(KeyError(secret)),
        "ascii": lambda: ascii(secret)[1:-1],
        "quote": lambda: quote(secret),
        "quote, no safe": lambda: quote(secret, safe=""),
        "quote_plus": lambda: quote_plus(secret),
        "JSON of JSON": lambda: json.dumps(json.dumps(secret))[1:-1],
        "JSON of a repr": lambda: json.dumps(repr(secret), ensure_ascii=False)[1:-1],
    }
    forms = {}
    for name, make in made.items():
        with contextlib.suppress(UnicodeEncodeError, TypeError):
            forms[name] = make()
    data = masking._utf8(secret)
    for index, form in enumerate(b64_forms(data)):
        forms[f"base64 #{index}"] = form
    return forms


def shown(secret: str, text: str) -> list[str]:
    """The renderings of `secret` (and its bare forms inside reprs) still in `text`."""
    bare = {name: form for name, form in renderings(secret).items() if "repr in" not in name}
    bare["repr, quote escaped"] = "".join("\\'" if c == "'" else repr(c)[1:-1] for c in secret)
    return [name for name, form in bare.items() if form and form in text]


# -- each rendering ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(renderings(SECRET)))
def test_each_rendering_is_masked_inside_other_text(name):
    form = renderings(SECRET)[name]
    with registered(SECRET):
        masked = masking.mask(f"before {form} after")
    assert not shown(SECRET, masked), masked
    assert masked.startswith("before ") and masked.endswith(" after")
    assert MASK in masked


def test_error_type_and_messages_of_exceptions():
    with registered(SECRET):
        assert masking.mask(f"Err_{SECRET}") == "Err_***"
        assert masking.mask(repr(ValueError(SECRET))) == "ValueError('***')"
        assert MASK in masking.mask(str(KeyError(SECRET)))
        assert SECRET not in masking.mask(str({"a": [SECRET]}))


def test_json_variants_other_encoders_write():
    secret = "a/b<c>&é😀"
    with registered(secret):
        for form in (
            "a\\/b<c>&\\u00e9\\ud83d\\ude00",  # escaped solidus (PHP)
            "a/b\\u003cc\\u003e\\u0026\\u00e9\\ud83d\\ude00",  # HTML-safe (Go)
            "a/b<c>&\\u00E9\\uD83D\\uDE00",  # upper-case hex
        ):
            assert masking.mask(f'{{"x": "{form}"}}') == '{"x": "***"}', form


def test_url_encoding_with_lower_case_hex_and_javascript_safe_characters():
    secret = "it's (a) sécret!"
    with registered(secret):
        for form in ("it%27s%20%28a%29%20s%c3%a9cret%21", "it's%20(a)%20s%C3%A9cret!"):
            assert masking.mask(f"?key={form}&x=1") == "?key=***&x=1", form


def test_bytes_repr_is_masked():
    with registered(SECRET):
        text = repr(SECRET.encode())
        assert masking.mask(text) == "b'***'"


@pytest.mark.parametrize("offset", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
def test_base64_of_a_longer_text_hides_all_but_the_edge_bits(offset, encode):
    secret = "hunter2-is-my-password"
    data = secret.encode()
    with registered(secret):
        wrapped = encode(b"u" * offset + data + b"!?").decode()  # e.g. Basic auth "user:pass"
        masked = masking.mask(wrapped)
    assert MASK in masked
    # at most two characters on either side of the mask are left of the secret's part
    start = -(-8 * offset // 6)
    end = 8 * (offset + len(data)) // 6
    assert masked == wrapped[:start] + MASK + wrapped[end:]


def test_short_secrets_are_not_masked_in_offset_base64():
    with registered("abcd"):  # 4 bytes: too few characters of its own at an offset
        assert masking.mask(base64.b64encode(b"x" + b"abcd").decode()) == "eGFiY2Q="
        assert masking.mask(base64.b64encode(b"abcd").decode()) == MASK


def test_the_longest_secret_wins_where_two_overlap():
    with registered("tok", "tok-longer-value"):
        assert masking.mask("a tok-longer-value b tok c") == "a *** b *** c"


def test_a_multi_line_secret_is_masked_line_by_line_too():
    key = "-----BEGIN KEY-----\nMIIEvQIBADANBg\n-----END KEY-----"
    with registered(key):
        assert masking.mask(f"x {key} y") == "x *** y"
        assert masking.mask("line: MIIEvQIBADANBg") == "line: ***"


def test_masking_recurses_into_containers_and_dict_keys():
    with registered(SECRET):
        value = {"a": [SECRET, (1, f"x{SECRET}")], SECRET: None}
        assert masking.mask(value) == {"a": ["***", (1, "x***")], "***": None}


def test_a_secret_holding_the_mask_character_is_masked_to_a_fixed_point():
    with registered("a**"):
        assert masking.mask("aa****") == "******"
        assert masking.mask(masking.mask("aa***a**")) == masking.mask("aa***a**")


def test_nothing_registered_changes_nothing():
    assert masking.mask("anything at all") == "anything at all"


def test_masking_a_megabyte_with_several_secrets_is_quick():
    secrets = [f"{SECRET}-{i}" for i in range(5)]
    with registered(*secrets):
        text = ("lorem ipsum dolor sit amet " * 40_000)[:1_000_000] + secrets[3]
        started = time.perf_counter()
        masked = masking.mask(text)
        elapsed = time.perf_counter() - started
    assert masked.endswith(MASK) and elapsed < 2.0, elapsed


# -- excerpts: masked, then cut ---------------------------------------------------------------


def test_an_excerpt_masks_before_it_cuts():
    secret = "envS3cr3t8b0e715"
    with registered(secret):
        text = "x" * 10 + secret + "y" * 100
        for limit in range(1, 40):
            cut = masking.excerpt(text, limit)
            assert "envS" not in cut and "S3cr3t" not in cut, (limit, cut)
            assert len(cut) <= max(limit, 1)


def test_an_excerpt_says_how_much_it_cut():
    text = "a" * 1000
    cut = masking.excerpt(text, 100, note=masking.CUT)
    assert len(cut) <= 100
    kept = cut.index("…")
    assert cut == "a" * kept + f"… ({1000 - kept} more characters cut)"
    assert masking.excerpt("short", 100, note=masking.CUT) == "short"


def test_a_one_line_excerpt_masks_a_secret_its_joining_puts_back_together():
    with registered("two words"):
        assert masking.excerpt("two\n   words here", 100, one_line=True) == "*** here"


def test_excerpt_frames_bounds_the_trace_and_each_frame():
    with registered(SECRET):
        frames = [f"frame {i} {SECRET}" for i in range(1000)] + [["f.py", 1, "g", "x" * 900]]
        kept = masking.excerpt_frames(frames, 2000, frame_limit=50)
    assert len(json.dumps(kept, ensure_ascii=False)) <= 2000
    assert kept[0] == "frame 0 ***" and kept[-1].endswith("more frames cut)")
    assert not any(SECRET in str(frame) for frame in kept)
    with registered(SECRET):
        (frame,) = masking.excerpt_frames(
            [["f.py", 7, "g", "y" * 900 + SECRET]], 10_000, frame_limit=50
        )
    assert frame[:3] == ["f.py", 7, "g"] and len(frame[3]) <= 50


def test_a_masker_masks_its_own_values_and_the_registered_ones():
    masker = masking.Masker(["k-123456"])
    with registered(SECRET):
        assert masker.mask(f"{SECRET} k-123456 {json.dumps('k-123456')}") == '*** *** "***"'
    assert masking.mask("k-123456") == "k-123456"  # not registered for everyone


def test_the_log_processor_masks_values_of_any_type_as_they_would_be_shown():
    class Thing:
        def __repr__(self) -> str:
            return f"Thing({SECRET!r})"

    with registered(SECRET):
        event = masking.structlog_processor(None, "info", {"event": "x", "thing": Thing(), "n": 1})
    assert event == {"event": "x", "thing": "Thing('***')", "n": 1}


# -- properties -------------------------------------------------------------------------------

ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=30)
# A secret that begins or ends with the mask itself cannot be told from its masked form
SECRETS = (
    st.text(st.characters(codec=None, exclude_categories=()), min_size=3, max_size=30)
    | st.text(st.sampled_from("'\"\\/ é😀\n\tx%+=*"), min_size=3, max_size=12)
).filter(lambda secret: MASK not in secret)


@settings(max_examples=300, deadline=None)
@given(secret=SECRETS, before=ANY_TEXT, after=ANY_TEXT)
def test_every_rendering_embedded_in_any_text_is_masked(secret, before, after):
    forms = renderings(secret)
    with registered(secret):
        for name, form in forms.items():
            masked = masking.mask(before + form + after)
            assert form not in masked, (name, form, masked)
            assert masking.mask(masked) == masked  # idempotent


@settings(max_examples=200, deadline=None)
@given(secret=SECRETS, text=ANY_TEXT, limit=st.integers(1, 80))
def test_mask_is_idempotent_and_an_excerpt_keeps_no_rendering(secret, text, limit):
    with registered(secret):
        for form in renderings(secret).values():
            whole = text + form + text
            once = masking.mask(whole)
            assert masking.mask(once) == once
            cut = masking.excerpt(whole, limit, one_line=True)
            assert form not in cut and masking.mask(cut) == cut


@settings(max_examples=150, deadline=None)
@given(
    secret=st.text(st.characters(codec="utf-8"), min_size=5, max_size=30),
    offset=st.integers(0, 8),
    tail=st.binary(max_size=8),
)
def test_base64_inside_a_longer_text_is_masked_at_any_offset(secret, offset, tail):
    data = secret.encode()
    with registered(secret):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            wrapped = encode(b"\x00" * offset + data + tail).decode()
            first = -(-8 * offset // 6)
            end = 8 * (offset + len(data)) // 6
            middle = wrapped[first:end]
            if len(middle) >= masking.MIN_BASE64_PART:
                assert middle not in masking.mask(wrapped)
