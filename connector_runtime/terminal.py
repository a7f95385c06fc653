"""Where the command line writes: reports to stdout (`out`), everything for a person
watching (progress, warnings, errors) to stderr (`console`); and its exit codes."""

from __future__ import annotations

import sys

from rich.console import Console

OK, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130
# no hard wraps: `file:line:` stays parseable; piped output gets room for whole tables
console = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 160)
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
