"""`connector validate`'s report of local handlers (design §13): each is loaded as a sync
would load it (its module imported, TypeScript built) but not called, and named with the
export it calls and the handler shape it has.

Before a call, the shape is the configured one (`shape:`), else what the export tells
(Azure's `main(req)` or `(context, req)`, Google's `(req, res)`, a default export's
`(req: Request, context)`), else "fivetran or netlify", which the first answer tells
apart (`connector test` says which it was).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape

from . import masking
from .config import Config
from .errors import FunctionError, InvokeFailed
from .sync import SyncJob
from .terminal import console, out

FAILURE_CHARS = 300


def report(config: Config, jobs: list[SyncJob]) -> bool:
    """One line per local handler on stdout; False if any of them did not load."""
    loaded = True
    for job in jobs:
        function = config.connector(job.connector).function
        if function.kind != "local" or function.runtime is not None:
            continue  # a Lambda, a URL, an executable: called as its host calls it
        invoker = job.invoker()
        try:
            loaded &= _report_one(config, job.connector, invoker)
        finally:
            invoker.close()
    return loaded


def _report_one(config: Config, name: str, invoker: Any) -> bool:
    local = _local(invoker)
    if local is None:
        return True
    file = _shown_path(config, Path(local.spec.source or local.spec.path))
    try:
        described = local.describe()
    except (InvokeFailed, FunctionError) as exc:
        said = masking.excerpt(str(exc), FAILURE_CHARS, one_line=True)
        console.print(f"[red]{name}: {escape(file)} did not load: {escape(said)}[/red]")
        return False
    configured = config.connector(name).function.shape
    shape = described["shape"]
    how = "configured" if configured else "by its export" if shape else "told by its answer"
    out.print(
        f"{name}: {escape(file)}, handler {escape(repr(described['handler']))}, "
        f"shape {shape or 'fivetran or netlify'} ({how})",
        highlight=False,
    )
    return True


def _local(invoker: Any) -> Any:
    """The local (Python or node) invoker, also behind a background function's wrapper."""
    for candidate in (invoker, getattr(invoker, "inner", None)):
        if callable(getattr(candidate, "describe", None)) and hasattr(candidate, "spec"):
            return candidate
    return None


def _shown_path(config: Config, path: Path) -> str:
    """`path` relative to the config's folder when it is inside it."""
    try:
        return str(path.relative_to(Path(config.path).resolve().parent))
    except ValueError:
        return str(path)
