"""`connector test NAME`: one call with setup_test, judged like a page, writing nothing."""

import json

RECORDING = """
import json, pathlib
def handler(request):
    pathlib.Path("request.json").write_text(json.dumps(request))
    return ANSWER
"""


def answering(project, answer: str):
    return project(RECORDING.replace("ANSWER", answer))


def test_a_valid_answer_passes_and_nothing_is_written(project):
    demo = answering(
        project,
        '{"state": {"c": 1}, "insert": {"t": [{"id": 1}]}, '
        '"schema": {"t": {"primary_key": ["id"]}}}',
    )
    result = demo.connector("test", "demo")
    assert result.returncode == 0, result.stderr
    assert result.said("valid response") and result.said("1 rows")
    request = json.loads((demo.root / "request.json").read_text())
    assert request["setup_test"] is True and request["state"] == {}
    assert not demo.warehouse_path.exists()


def test_an_invalid_answer_fails_naming_the_problem(project):
    demo = answering(
        project,
        '{"state": {}, "insert": {"t": [{"name": "no key"}]}, '
        '"schema": {"t": {"primary_key": ["id"]}}}',
    )
    result = demo.connector("test", "demo")
    assert result.returncode == 1
    assert (
        result.said("invalid_response") and result.said("row 0") and result.said("'id' is missing")
    )
    assert not demo.warehouse_path.exists()


def test_a_function_error_fails(project):
    demo = project("def handler(request):\n    raise ValueError('bad credentials')\n")
    result = demo.connector("test", "demo")
    assert result.returncode == 1
    assert result.said("function_error") and result.said("bad credentials")
