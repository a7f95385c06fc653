"""Handler shapes through the CLI: functions written for Netlify, Google Cloud Functions and
Azure Functions run unchanged, in real node and Python workers, into real DuckDB files.

Each function syncs two pages (its state counts them) and records what it was given, so
each test proves both the call (event, request, response objects) and the answer.
Without node the JavaScript tests skip, or fail when CI=true.
"""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest
import yaml
from conftest import Project, run_connector
from typescript_toolchain import unavailable

# Each function pages twice: page 1 then page 2 (hasMore false), rows {id, seen}: `seen`
# is what the handler saw of its call, as JSON.
NETLIFY_MJS = """\
export const handler = async (event, context) => {
  const request = JSON.parse(event.body);
  const page = (request.state.page ?? 0) + 1;
  const seen = { method: event.httpMethod, path: event.path, type: event.headers['content-type'],
                 base64: event.isBase64Encoded, keys: Object.keys(event).sort(),
                 remaining: typeof context.getRemainingTimeInMillis() };
  const answer = { state: { page }, hasMore: page < 2,
                   insert: { calls: [{ id: page, seen: JSON.stringify(seen) }] } };
  return { statusCode: 200, headers: { 'content-type': 'application/json' },
           body: JSON.stringify(answer) };
};
"""
WEB_MJS = """\
export default async (req, context) => {
  const request = await req.json();
  const page = (request.state.page ?? 0) + 1;
  const seen = { method: req.method, url: req.url, type: req.headers.get('content-type'),
                 requestId: typeof context.requestId, site: context.site.name };
  return Response.json({ state: { page }, hasMore: page < 2,
                         insert: { calls: [{ id: page, seen: JSON.stringify(seen) }] } });
};
"""
# Fivetran's Google Cloud Functions samples answer like this: res.header, then status().send()
GCF_JS = """\
exports.handler = (req, res) => {
  const page = (req.body.state.page ?? 0) + 1;
  const seen = { method: req.method, type: req.get('Content-Type'), secret: req.body.secrets.token };
  res.header('Content-Type', 'application/json');
  res.status(200).send({ state: { page }, hasMore: page < 2,
                         insert: { calls: [{ id: page, seen: JSON.stringify(seen) }] } });
};
"""
AZURE_JS = """\
module.exports = async function (context, req) {
  context.log('JavaScript HTTP trigger function processed a request.');
  const page = (req.body.state.page ?? 0) + 1;
  const seen = { method: req.method, url: req.url, fn: context.executionContext.functionName };
  context.res = { status: 200, body: { state: { page }, hasMore: page < 2,
                  insert: { calls: [{ id: page, seen: JSON.stringify(seen) }] } } };
};
"""
AZURE_DONE_JS = """\
module.exports = function (context, req) {
  const page = (req.body.state.page ?? 0) + 1;
  const seen = { style: 'context.done', raw: typeof req.rawBody };
  context.res = { body: JSON.stringify({ state: { page }, hasMore: page < 2,
                  insert: { calls: [{ id: page, seen: JSON.stringify(seen) }] } }) };
  setTimeout(() => context.done(), 10);
};
"""
FIVETRAN_MJS = """\
export const handler = async (request, context) => {
  const page = (request.state.page ?? 0) + 1;
  const seen = { keys: Object.keys(request).sort(), json: Object.keys(JSON.parse(JSON.stringify(request))).sort() };
  return { state: { page }, hasMore: page < 2,
           insert: { calls: [{ id: page, seen: JSON.stringify(seen) }] } };
};
"""
REQUEST_KEYS = ["agent", "secrets", "state", "sync_id"]
HANDLER_EVENT_KEYS = [
    *("rawUrl", "rawQuery", "path", "httpMethod", "headers", "multiValueHeaders"),
    *("queryStringParameters", "multiValueQueryStringParameters", "body", "isBase64Encoded"),
]

NETLIFY_PY = """\
import json

def handler(event, context):
    request = json.loads(event["body"])
    page = request["state"].get("page", 0) + 1
    seen = {"method": event["httpMethod"], "keys": sorted(event), "fn": context.function_name}
    answer = {"state": {"page": page}, "hasMore": page < 2,
              "insert": {"calls": [{"id": page, "seen": json.dumps(seen)}]}}
    return {"statusCode": 200, "body": json.dumps(answer)}
"""
AZURE_PY = """\
import json

import azure.functions as func


def main(req: func.HttpRequest) -> func.HttpResponse:
    request = req.get_json()
    page = request["state"].get("page", 0) + 1
    seen = {"method": req.method, "url": req.url, "type": req.headers.get("Content-Type")}
    answer = {"state": {"page": page}, "hasMore": page < 2,
              "insert": {"calls": [{"id": page, "seen": json.dumps(seen)}]}}
    return func.HttpResponse(json.dumps(answer), status_code=200, mimetype="application/json")
"""
AZURE_DICT_PY = """\
import json

def main(req):
    request = json.loads(req.get_body())
    page = request["state"].get("page", 0) + 1
    seen = {"params": dict(req.params), "secret": request["secrets"]["token"]}
    return {"status": 200, "body": {"state": {"page": page}, "hasMore": page < 2,
            "insert": {"calls": [{"id": page, "seen": json.dumps(seen)}]}}}
"""
FIVETRAN_PY = """\
import json

def handler(request, context):
    page = request["state"].get("page", 0) + 1
    seen = {"keys": sorted(request), "json": sorted(json.loads(json.dumps(request)))}
    return {"state": {"page": page}, "hasMore": page < 2,
            "insert": {"calls": [{"id": page, "seen": json.dumps(seen)}]}}
"""


@pytest.fixture
def shaped(tmp_path):
    """`shaped(file, source, **function)`: one connector `demo` calling that file."""

    def make(file: str, source: str, **function) -> Project:
        if not file.endswith(".py") and shutil.which("node") is None:
            unavailable("node is not on PATH; install Node.js 18+ to run the JavaScript tests")
        made = Project(tmp_path, "demo")
        made.handler = tmp_path / file
        made.handler.write_text(textwrap.dedent(source))
        made.write_config(
            function={"local": file, "timeout": "30s", **function},
            secrets={"token": "s3cr3t-token-value"},
        )
        return made

    return make


def seen(demo: Project) -> list[dict]:
    """What the handler saw on each call, page by page."""
    return [json.loads(text) for (text,) in demo.query("SELECT seen FROM demo.calls ORDER BY id")]


def synced(demo: Project) -> list[dict]:
    """Run `demo` (two pages); what its handler saw on each call."""
    result = demo.run()
    assert result.returncode == 0, result.stderr
    assert demo.state() == {"page": 2}
    return seen(demo)


# -- JavaScript ---------------------------------------------------------------------------


def test_netlify_handler_gets_a_handler_event(shaped):
    demo = shaped("handler.mjs", NETLIFY_MJS)
    first, _ = synced(demo)
    assert first["method"] == "POST"
    assert first["path"] == "/.netlify/functions/demo"
    assert (first["type"], first["base64"], first["remaining"]) == (
        "application/json",
        False,
        "number",
    )
    assert first["keys"] == REQUEST_KEYS  # until its answer shows the shape
    configured = shaped("handler.mjs", NETLIFY_MJS, shape="netlify")
    configured.warehouse_path.unlink()
    first, _ = synced(configured)
    assert first["keys"] == sorted(HANDLER_EVENT_KEYS)


def test_web_handler_gets_a_fetch_request_and_returns_a_response(shaped):
    demo = shaped("handler.mjs", WEB_MJS)
    first, second = synced(demo)
    assert first == {
        "method": "POST",
        "url": "http://localhost/.netlify/functions/demo",
        "type": "application/json",
        "requestId": "string",
        "site": "demo",
    }
    assert second == first


def test_google_cloud_function_answers_through_res(shaped):
    demo = shaped("index.js", GCF_JS)
    first, _ = synced(demo)
    assert first == {"method": "POST", "type": "application/json", "secret": "s3cr3t-token-value"}


@pytest.mark.parametrize("source", [AZURE_JS, AZURE_DONE_JS], ids=["context.res", "context.done"])
def test_azure_function_answers_through_context_res(shaped, source):
    demo = shaped("index.js", source)
    first, _ = synced(demo)
    if source is AZURE_JS:
        assert first == {"method": "POST", "url": "http://localhost/api/demo", "fn": "demo"}
    else:
        assert first == {"style": "context.done", "raw": "string"}


def test_a_fivetran_handler_sees_exactly_the_request(shaped):
    demo = shaped("handler.mjs", FIVETRAN_MJS)
    first, _ = synced(demo)
    assert first == {"keys": REQUEST_KEYS, "json": REQUEST_KEYS}


# -- Python ------------------------------------------------------------------------------


def test_python_netlify_style_handler(shaped):
    demo = shaped("handler.py", NETLIFY_PY)
    first, _ = synced(demo)
    assert first == {"method": "POST", "keys": REQUEST_KEYS, "fn": "demo"}


def test_python_azure_function_with_azure_functions_types(shaped):
    demo = shaped("__init__.py", AZURE_PY)
    first, _ = synced(demo)
    assert first == {
        "method": "POST",
        "url": "http://localhost/api/demo",
        "type": "application/json",
    }


def test_python_azure_function_returning_a_dict(shaped):
    demo = shaped("handler.py", AZURE_DICT_PY, isolation="inline")
    first, _ = synced(demo)
    assert first == {"params": {}, "secret": "s3cr3t-token-value"}


def test_a_python_fivetran_handler_sees_exactly_the_request(shaped):
    demo = shaped("handler.py", FIVETRAN_PY)
    first, _ = synced(demo)
    assert first == {"keys": REQUEST_KEYS, "json": REQUEST_KEYS}


# -- what validate and test say -------------------------------------------------------------

TOLD_BY_ANSWER = "shape fivetran or netlify (told by its answer)"
SAID = {  # connector: (file, source, `shape:`, what `validate` says, the shape `test` names)
    "netlify": (
        "netlify.mjs",
        NETLIFY_MJS,
        None,
        f"handler 'handler', {TOLD_BY_ANSWER}",
        "netlify",
    ),
    "configured": (
        "configured.mjs",
        NETLIFY_MJS,
        "netlify",
        "shape netlify (configured)",
        "netlify",
    ),
    "web": ("web.mjs", WEB_MJS, None, "handler 'default', shape web (by its export)", "web"),
    "gcf": ("gcf.js", GCF_JS, None, "handler 'handler', shape gcf (by its export)", "gcf"),
    "azure": (
        "azure.js",
        AZURE_JS,
        None,
        "handler 'default', shape azure (by its export)",
        "azure",
    ),
    "fivetran": ("fivetran.mjs", FIVETRAN_MJS, None, TOLD_BY_ANSWER, "fivetran"),
    "netlify_py": ("netlify_py.py", NETLIFY_PY, None, TOLD_BY_ANSWER, "netlify"),
    "azure_py": (
        "azure_py.py",
        AZURE_PY,
        None,
        "handler 'main', shape azure (by its export)",
        "azure",
    ),
}


def test_validate_and_test_say_which_shape_they_saw(tmp_path):
    if shutil.which("node") is None:
        unavailable("node is not on PATH; install Node.js 18+ to run the JavaScript tests")
    connectors = {}
    for name, (file, source, shape, _, _) in SAID.items():
        (tmp_path / file).write_text(textwrap.dedent(source))
        function = {"local": file, "timeout": "30s", **({"shape": shape} if shape else {})}
        connectors[name] = {"function": function, "secrets": {"token": "s3cr3t-token-value"}}
    config = tmp_path / "connectors.yaml"
    config.write_text(yaml.safe_dump({"warehouse": "duckdb:///w.duckdb", "connectors": connectors}))

    validated = run_connector("validate", config=config)
    assert validated.returncode == 0, validated.stderr
    for name, (file, _, _, said, _) in SAID.items():
        assert validated.printed(f"{name}: {file}, "), validated.stdout
        line = next(line for line in validated.stdout.splitlines() if line.startswith(f"{name}:"))
        assert line.endswith(said), line
    for name in ("netlify", "web", "gcf", "fivetran", "azure_py"):  # one of each shape
        tested = run_connector("test", name, config=config)
        assert tested.returncode == 0, tested.stderr
        assert tested.said(f"({SAID[name][4]} handler; 1 rows"), tested.stderr
    assert not (tmp_path / "w.duckdb").exists()  # neither wrote anything


# -- failures ----------------------------------------------------------------------------

FAILING = {
    "netlify.mjs": """\
        export const handler = async (event) => ({
          statusCode: 502, body: JSON.stringify({ error: `upstream refused ${JSON.parse(event.body).secrets.token}` }),
        });
        """,
    "web.mjs": """\
        export default async (req) => {
          const { secrets } = await req.json();
          return new Response(`upstream refused ${secrets.token}`, { status: 502 });
        };
        """,
    "gcf.js": """\
        exports.handler = (req, res) => res.status(502).send(`upstream refused ${req.body.secrets.token}`);
        """,
    "azure.js": """\
        module.exports = async (context, req) => ({ status: 502, body: `upstream refused ${req.body.secrets.token}` });
        """,
    "netlify.py": """\
        import json
        def handler(event, context):
            token = json.loads(event["body"])["secrets"]["token"]
            return {"statusCode": 502, "body": f"upstream refused {token}"}
        """,
    "azure.py": """\
        def main(req):
            return {"status": 502, "body": "upstream refused " + req.get_json()["secrets"]["token"]}
        """,
}


@pytest.mark.parametrize("file", sorted(FAILING))
def test_a_non_2xx_status_is_invoke_failed_quoting_the_body_masked(shaped, file):
    demo = shaped(file, FAILING[file])
    result = demo.run()
    assert result.returncode == 1
    (alert,) = demo.alerts()
    shape = file.split(".")[0]
    assert alert["kind"] == "invoke_failed"
    assert alert["message"].startswith(f"the {shape} handler answered 502 Bad Gateway: ")
    assert "upstream refused ***" in alert["message"], alert["message"]
    assert "s3cr3t" not in result.stderr + result.stdout + json.dumps(alert, default=str)
    assert demo.tables() == [] and demo.state() == {}


@pytest.mark.parametrize(
    ("file", "source", "said"),
    [
        (
            "handler.mjs",
            "export default async () => ({ state: {} });",
            "a web handler returns a Response; this one returned an object (state)",
        ),
        (
            "handler.mjs",
            "export const handler = async () => ({ state: {} });",
            "a netlify handler returns {statusCode, body}; this one returned an object (state)",
        ),
        (
            "handler.py",
            "def main(req):\n    return None\n",
            "an azure handler returns an HttpResponse or {status, body}; this one returned None",
        ),
    ],
    ids=["web-without-response", "configured-netlify", "azure-none"],
)
def test_an_answer_not_of_the_shape_is_a_function_error(shaped, file, source, said):
    demo = shaped(file, source, **({"shape": "netlify"} if "statusCode" in said else {}))
    result = demo.run()
    assert result.returncode == 1
    (alert,) = demo.alerts()
    assert (alert["kind"], alert["error_type"]) == ("function_error", "Runtime.InvalidResponse")
    assert alert["message"] == said


@pytest.mark.parametrize(
    ("function", "said"),
    [
        (
            {"local": "handler.py", "shape": "gcf"},
            "connectors.demo.function.shape: gcf is a JavaScript handler's shape",
        ),
        (
            {"http": "https://fn.example.com/sync", "shape": "netlify"},
            "connectors.demo.function: shape says how a local handler file is called",
        ),
        ({"local": "handler.py", "shape": "lambda"}, "connectors.demo.function.shape:"),
    ],
    ids=["python-gcf", "http", "unknown"],
)
def test_a_shape_that_cannot_apply_is_a_config_error(tmp_path, function, said):
    demo = Project(tmp_path, "demo")
    demo.handler.write_text("def handler(request):\n    return {'state': {}}\n")
    demo.write_config()
    text = demo.config.read_text().replace("    function:\n      local: handler.py\n", "")
    demo.config.write_text(
        text.replace("  demo:\n", f"  demo:\n    function: {json.dumps(function)}\n")
    )
    result = demo.connector("validate")
    assert result.returncode == 2, result.stderr
    assert result.said(said), result.stderr


def test_a_destination_function_has_no_shape(tmp_path):
    """A destination's {statusCode, message} is its own answer, never unwrapped as Netlify's."""
    demo = Project(tmp_path, "demo")
    demo.handler.write_text("def handler(request):\n    return {'state': {}}\n")
    demo.write_config(destination={"function": {"local": "handler.py", "shape": "netlify"}})
    result = demo.connector("validate")
    assert result.returncode == 2, result.stderr
    assert result.said("connectors.demo.destination.function.shape: a destination function")
