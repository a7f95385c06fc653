"""No rendering of a secret leaves the runtime, whichever channel a function puts it in.

A property test: a generated secret (any printable Unicode, quotes and backslashes
included) is a connector secret from `${env:VAR}`; nine connectors put it through every
channel a function has:

- `demo` prints it (stdout, stderr, one line over the 64 KB output tail) and answers
  with a huge `errorMessage`, an `errorType` and a long `stackTrace` list holding it;
- `strace`: `errorType` "Err_<secret>" and `stackTrace` as a string;
- `valueerr`, `keyerr`, `dictrepr`: raise ValueError(secret), KeyError(secret) (its text
  is the repr) and an exception whose text is a dict's repr;
- `typed`: a value that does not fit its declared column type echoes it;
- `web500`, `web400`, `weberr`: an `http:` function answering 500 (text), 400 (JSON) and
  400 with the error shape (its `errorMessage` an object), each body holding it.

Texts holding it are long and repeat it, so that every cut (the 300-character line of
`run`, the 200-character body excerpt, the 60-character value, the 64 KB bounds) goes
through a copy of it. Then the real CLI runs (`run`, `test`, `alerts`, `syncs --logs`,
with -v logs) and no rendering of the secret (raw, JSON-escaped, repr-escaped,
URL-encoded, base64), nor the first or last half of a long one, may appear in what it
printed or in `connector_runtime`'s tables.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, quote_plus

import pytest
import yaml
from conftest import serving
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

SECRET_VARIABLE = "LEAK_TEST_SECRET"

# The same renderings the handlers and the HTTP function write (also in HANDLERS below).
FORMS_SOURCE = '''
import base64
import json
from urllib.parse import quote, quote_plus


def renderings(secret):
    data = secret.encode()
    return [
        secret,
        json.dumps(secret),
        json.dumps(secret, ensure_ascii=False),
        repr(secret),
        ascii(secret),
        repr({"token": secret, "note": "it's \\"quoted\\""}),
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        base64.b64encode(data).decode(),
        base64.urlsafe_b64encode(data).decode().rstrip("="),
    ]


def all_forms(secret):
    return " | ".join(renderings(secret))


def repeated(secret, chars):
    """The secret over and over, at least `chars` long: any cut goes through a copy."""
    return (secret + " ") * (chars // (len(secret) + 1) + 1)
'''
namespace: dict = {}
exec(FORMS_SOURCE, namespace)  # one source for the test and the handlers
all_forms, repeated = namespace["all_forms"], namespace["repeated"]

HANDLERS = (
    FORMS_SOURCE
    + """
import sys


def demo(request):
    secret = request["secrets"]["apiToken"]
    forms = all_forms(secret)
    print(f"stdout says {forms}")
    print(f"stderr says {forms}", file=sys.stderr)
    print("a long line " + repeated(secret, 70_000))  # over the 64 KB tail: cut at its start
    return {
        # over 64 KB even once masked (masking shortens it)
        "errorMessage": "boom " + repeated(secret, 300) + forms + repeated(secret, 70_000)
        + "." * 70_000,
        "errorType": "Err_" + repeated(secret, 300),
        "stackTrace": [[f"f{i}.py", i, f"fn_{secret}", f"login({forms})"] for i in range(400)],
    }


def strace(request):
    secret = request["secrets"]["apiToken"]
    return {
        "errorMessage": "refused: " + all_forms(secret),
        "errorType": "Err_" + secret,
        "stackTrace": "Traceback (most recent call last): " + all_forms(secret),
    }


def valueerr(request):
    raise ValueError(request["secrets"]["apiToken"])


def keyerr(request):
    raise KeyError(request["secrets"]["apiToken"])


def dictrepr(request):
    raise ValueError({"token": request["secrets"]["apiToken"], "note": "it's \\"quoted\\""})


def typed(request):
    secret = request["secrets"]["apiToken"]
    return {
        "state": {},
        "insert": {"t": [{"id": 1, "amount": repeated(secret, 400)}]},
        "schema": {"t": {"primary_key": ["id"], "columns": {"amount": "LONG"}}},
    }
"""
)

KINDS = {
    "demo": "function_error",
    "strace": "function_error",
    "valueerr": "function_error",
    "keyerr": "function_error",
    "dictrepr": "function_error",
    "typed": "invalid_response",
    "web500": "invoke_failed",
    "web400": "invoke_failed",
    "weberr": "function_error",
}


class _Function(BaseHTTPRequestHandler):
    """An `http:` function that fails, echoing the secret it was sent: 500 in text, 400 in
    JSON, or 400 with the error shape, by path."""

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        secret = request["secrets"]["apiToken"]
        if self.path == "/500":
            status, kind = 500, "text/plain; charset=utf-8"
            body = "upstream failed: " + repeated(secret, 400) + all_forms(secret)
        elif self.path == "/400":
            status, kind = 400, "application/json"
            body = json.dumps({"detail": repeated(secret, 400), "forms": all_forms(secret)})
        else:
            status, kind = 400, "application/json"
            # an errorMessage that is not a string is shown as its JSON, cut
            message = {"denied": repeated(secret, 300), "forms": all_forms(secret)}
            body = json.dumps(
                {
                    "errorMessage": message,
                    "errorType": "Err_" + secret,
                    "stackTrace": [f"at auth({secret})"],
                }
            )
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def http_function():
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _Function)) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}"


def write_config(made, url: str) -> None:
    secrets = {"apiToken": "${env:" + SECRET_VARIABLE + "}"}
    quick = {"attempts": 2, "base": "0.01s", "cap": "0.01s"}
    connectors = {}
    for name in KINDS:
        if not name.startswith("web"):
            # only `demo` prints; the others run inline, sparing a worker process's start
            function = {"local": "handler.py", "handler": name}
            function |= {"isolation": "inline"} if name != "demo" else {}
            connectors[name] = {"function": function, "secrets": secrets}
    for name, path in (("web500", "/500"), ("web400", "/400"), ("weberr", "/err")):
        function = {"http": url + path, "retry": quick}
        connectors[name] = {"function": function, "secrets": secrets}
    document = {
        "warehouse": "duckdb:///warehouse.duckdb",
        "server": {"listen": "127.0.0.1:0"},
        "connectors": connectors,
    }
    made.config.write_text(yaml.safe_dump(document, sort_keys=False))


# -- what counts as a leak ----------------------------------------------------------------


def leaked_forms(secret: str) -> dict[str, str]:
    """Each rendering of `secret` that must not appear, by name."""
    data = secret.encode()
    forms = {
        "raw": secret,
        "JSON": json.dumps(secret)[1:-1],
        "JSON, not ensure_ascii": json.dumps(secret, ensure_ascii=False)[1:-1],
        "repr": "".join(repr(c)[1:-1] for c in secret),
        "repr, quote escaped": "".join("\\'" if c == "'" else repr(c)[1:-1] for c in secret),
        "ascii": ascii(secret)[1:-1],
        "quote": quote(secret, safe=""),
        "quote, safe /": quote(secret),
        "quote_plus": quote_plus(secret),
        "JSON of JSON": json.dumps(json.dumps(secret))[1:-1],
    }
    for name, encode in (("base64", base64.b64encode), ("urlsafe", base64.urlsafe_b64encode)):
        forms[name] = encode(data).decode()
        forms[f"{name}, no padding"] = forms[name].rstrip("=")
    half = -(-len(secret) // 2)
    if half >= 6:  # a cut before masking would leave a prefix (or, from the end, a suffix)
        forms["first half"], forms["last half"] = secret[:half], secret[-half:]
    return forms


def _squeezed(text: str) -> str:
    return re.sub(r"\s+", "", text)


# What follows a text cut short (`...`, `…`, the end of a message or line) or precedes
# one cut at its start (the start of a line)
_AFTER_CUT = ("...", "…", ")", "\n")


def leaks(secret: str, text: str) -> list[str]:
    """Names of the renderings of `secret` found in `text` (whitespace also ignored: a
    terminal line may be joined or wrapped), and of the pieces of 5 characters or more of
    one that a cut would leave: a prefix before a cut's mark, a suffix starting a line."""
    found = []
    text = text + "\n"
    squeezed_text = _squeezed(text)
    for name, form in leaked_forms(secret).items():
        squeezed = _squeezed(form)
        if form in text or (len(squeezed) >= 6 and squeezed in squeezed_text):
            found.append(name)
        elif "half" not in name:
            for size in range(5, len(form)):
                prefix, suffix = form[:size], form[-size:]
                if any(prefix + mark in text for mark in _AFTER_CUT) or "\n" + suffix in text:
                    found.append(f"{name}: {size} characters of it at a cut")
                    break
    return found


def runtime_tables(made) -> str:
    """Every value of `connector_runtime`'s tables as text."""
    with made.warehouse() as con:
        tables = [
            t
            for (t,) in con.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'connector_runtime'"
            ).fetchall()
        ]
        dump = []
        for table in tables:
            for row in con.execute(f'SELECT * FROM connector_runtime."{table}"').fetchall():
                dump += [str(value) for value in row]
    return "\n".join(dump)


# -- the property -----------------------------------------------------------------------------

PRINTABLE = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))
TRICKY = st.sampled_from("'\"\\/%+=&? \t\néß€😀\u200b\u202e")
SECRETS = st.text(PRINTABLE | TRICKY, min_size=6, max_size=40).filter(
    # `*` is what masks are made of; a secret must show more than its whitespace, and be
    # no plain English word, which the runtime may write itself (`HttpRequest`, `connector`)
    lambda secret: (
        "*" not in secret
        and len(_squeezed(secret)) >= 6
        and not (secret.strip().isascii() and secret.strip().isalpha())
    )
)


@pytest.mark.slow
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # shrinking would take many minutes
)
@given(secret=SECRETS)
def test_no_rendering_of_a_secret_leaves_through_any_channel(
    secret, project, http_function, monkeypatch
):
    monkeypatch.setenv(SECRET_VARIABLE, secret)
    made = project(HANDLERS)
    write_config(made, http_function)
    for path in (made.warehouse_path, made.root / "warehouse.duckdb.wal"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    ran = made.connector("-v", "run")
    tested = made.connector("-v", "test", "demo")
    alerts = made.connector("alerts")
    syncs = made.connector("syncs", "demo", "--logs")
    stored = runtime_tables(made)

    shown = {
        "run": ran.stdout + ran.stderr,
        "test": tested.stdout + tested.stderr,
        "alerts": alerts.stdout + alerts.stderr,
        "syncs --logs": syncs.stdout + syncs.stderr,
        "connector_runtime tables": stored,
    }
    found = {where: leaks(secret, text) for where, text in shown.items()}
    assert not any(found.values()), f"{secret!r} leaked: {found}"

    # every channel was taken: one alert per connector, of the kind expected, masked
    assert ran.returncode == 1 and tested.returncode == 1 and alerts.returncode == 0
    assert syncs.returncode == 0 and syncs.printed("function output"), syncs.stdout
    with made.warehouse() as con:
        rows = con.execute(
            "SELECT connector, kind, error_type, message, length(CAST(stack_trace AS VARCHAR))"
            " FROM connector_runtime.alerts"
        ).fetchall()
    assert {connector: kind for connector, kind, *_ in rows} == KINDS, rows
    by_connector = {row[0]: row for row in rows}
    assert all("***" in message for _, _, _, message, _ in rows), rows
    _, _, error_type, message, trace_size = by_connector["demo"]
    assert error_type.startswith("Err_***") and len(error_type) <= 200
    assert len(message) <= 64 * 1024 and message.endswith("more characters cut)")
    assert trace_size <= 64 * 1024 + 100
    assert by_connector["strace"][2] == "Err_***" and by_connector["weberr"][2] == "Err_***"
    summary = [line for line in ran.stderr.splitlines() if line.startswith("function_error (Err")]
    assert summary and all(len(line) <= 320 for line in summary), summary
    assert any("see `connector alerts demo`" in line for line in summary), summary


# -- every place that cuts a text, at every position of the cut -----------------------------

CUT_SECRET = "Zq§tök-9k\\7w'\"Ω"  # escaped differently by JSON, repr and URLs


@pytest.fixture
def cut_secret(monkeypatch):
    from connector_runtime import masking

    monkeypatch.setattr(masking, "_secrets", masking._secrets)
    masking.register({"token": CUT_SECRET})
    return CUT_SECRET


def pieces(secret: str) -> list[str]:
    """The prefixes and suffixes of 3 characters or more of each rendering."""
    found = []
    for form in leaked_forms(secret).values():
        found += [form[:size] for size in range(3, len(form) + 1)]
        found += [form[-size:] for size in range(3, len(form) + 1)]
    return found


def assert_no_piece(secret: str, text: str) -> None:
    shown = [piece for piece in pieces(secret) if piece in text]
    assert not shown, (shown, text)


def test_a_rejected_value_is_masked_before_it_is_cut(cut_secret):
    from connector_runtime.batches import ValueRejected, column_array
    from connector_runtime.types import LogicalType

    for pad in range(80):
        value = "x" * pad + repeated(cut_secret, 200)
        assert_no_piece(cut_secret, str(ValueRejected(0, value, LogicalType.parse("LONG"))))
        with pytest.raises(ValueRejected) as rejected:
            column_array([value], LogicalType.parse("LONG"))  # Arrow's reason echoes it
        assert_no_piece(cut_secret, str(rejected.value))


def test_an_error_message_that_is_no_string_is_masked_before_it_is_cut(cut_secret):
    from connector_runtime.protocol import error_message

    for pad in range(80):
        message = {"detail": "x" * pad + repeated(cut_secret, 400)}
        assert_no_piece(cut_secret, error_message(message, "Err"))


def test_an_http_body_excerpt_is_masked_before_it_is_cut(cut_secret):
    from email.message import Message

    from connector_runtime.invokers.http import HttpInvoker, _Answer

    invoker = HttpInvoker("http://127.0.0.1:9/fn")
    headers = Message()
    headers["Content-Type"] = "application/json"
    for pad in range(60):
        body = json.dumps({"detail": "x" * pad + repeated(cut_secret, 400)}).encode()
        assert_no_piece(cut_secret, invoker._describe(_Answer(500, "Error", headers, body)))


def test_a_lambda_failure_body_is_masked_before_it_is_cut(cut_secret):
    pytest.importorskip("boto3")
    from connector_runtime import errors
    from connector_runtime.invokers.aws_lambda import LambdaInvoker

    invoker = LambdaInvoker("fn", region="eu-west-1")
    for pad in range(40):
        body = ("x" * (1980 + pad) + repeated(cut_secret, 100)).encode()
        with pytest.raises(errors.FunctionError) as failed:
            invoker._answer(body, "Unhandled", [])
        assert_no_piece(cut_secret, failed.value.message)


def test_the_output_tail_is_masked_before_a_long_line_is_cut(cut_secret):
    from connector_runtime.invokers import OutputTail

    for pad in range(40):
        tail = OutputTail(limit=300)
        tail.append(repeated(cut_secret, 400) + "x" * pad)
        assert_no_piece(cut_secret, tail.text())
