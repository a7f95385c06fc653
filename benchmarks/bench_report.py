"""The figures of `make bench` with their goals: one table on the terminal, one JSON file.

Every benchmark part hands its figures over as `BenchRow`s: a name, the median of its
runs, a unit and, where there is one, the `Goal` it is held to. `goals_table` shows them
with ✓ or ✗ beside each goal; `write_results` stores them, with the commit, the machine
and its load, in `bench-results.json` (or `--json PATH`), so runs can be compared over
time: `jq '.rows[] | [.name, .figure, .passed]' bench-results.json`.

A part that could not be measured is still a row, with `figure` None and a note saying
why, so a skipped warehouse never silently drops out of the comparison.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_VERSION = 1  # of bench-results.json's layout


@dataclass(frozen=True)
class Goal:
    """A bound a figure must reach: `at_least` (throughput) or `at_most` (time, ratio)."""

    at_least: float | None = None
    at_most: float | None = None

    def met(self, figure: float) -> bool:
        if self.at_least is not None and figure < self.at_least:
            return False
        return self.at_most is None or figure <= self.at_most

    def shown(self, unit: str) -> str:
        bound = "≥" if self.at_least is not None else "≤"
        return f"{bound} {_number(self.at_least if self.at_least is not None else self.at_most)} {unit}"

    def document(self) -> dict[str, float]:
        return {
            k: v
            for k, v in (("at_least", self.at_least), ("at_most", self.at_most))
            if v is not None
        }


@dataclass(frozen=True)
class BenchRow:
    """One figure: the median of `runs` (each run's figure), in `unit`, against `goal`.

    `figure` is None when the row could not be measured; `note` then says why. `detail`
    holds extra figures for the JSON file (seconds, peak memory, ...), not the table.
    """

    name: str
    figure: float | None
    unit: str
    goal: Goal | None = None
    runs: tuple[float, ...] = ()
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of_runs(
        cls, name: str, runs: Iterable[float], unit: str, goal: Goal | None = None, **more: Any
    ) -> BenchRow:
        runs = tuple(runs)
        return cls(name, statistics.median(runs) if runs else None, unit, goal, runs, **more)

    @classmethod
    def not_run(cls, name: str, unit: str, goal: Goal | None, why: str) -> BenchRow:
        return cls(name, None, unit, goal, note=why)

    @property
    def passed(self) -> bool | None:
        """True or False against the goal; None without a goal or a figure."""
        if self.goal is None or self.figure is None:
            return None
        return self.goal.met(self.figure)

    def document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "figure": self.figure,
            "unit": self.unit,
            "goal": self.goal.document() if self.goal else None,
            "passed": self.passed,
            "runs": list(self.runs),
            "note": self.note,
            **({"detail": self.detail} if self.detail else {}),
        }


def goals_table(rows: list[BenchRow], title: str, baseline: list[BenchRow] | None = None):
    """A rich Table: name, figure, goal, ✓/✗, runs (and the baseline's figure beside)."""
    from rich.table import Table

    before = {row.name: row for row in baseline or []}
    table = Table(title=title)
    table.add_column("figure", no_wrap=True)
    if baseline is not None:
        table.add_column("before", justify="right")
    table.add_column("now", justify="right")
    table.add_column("goal", justify="right")
    table.add_column("", justify="center")  # ✓ / ✗
    table.add_column("runs")
    for row in rows:
        cells = [row.name]
        if baseline is not None:
            old = before.get(row.name)
            cells.append(_shown(old.figure, old.unit) if old and old.figure is not None else "-")
        cells.append(_shown(row.figure, row.unit) if row.figure is not None else "not run")
        cells.append(row.goal.shown(row.unit) if row.goal else "")
        cells.append({True: "[green]✓[/]", False: "[red]✗[/]", None: ""}[row.passed])
        cells.append(", ".join(_number(run) for run in row.runs) if len(row.runs) > 1 else "")
        table.add_row(*cells)
    return table


def print_notes(console, rows: list[BenchRow]) -> None:
    """The rows' notes below the table: why a row was not run, how a figure was made."""
    for row in rows:
        if row.note:
            console.print(f"{row.name}: {row.note}", highlight=False)


def write_results(
    path: Path,
    rows: list[BenchRow],
    options: dict[str, Any],
    *,
    baseline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write bench-results.json; return the document. `baseline`: an older checkout's
    document, measured in the same run (`--baseline REV`)."""
    import json

    document = results_document(rows, options)
    if baseline is not None:
        document["baseline"] = baseline
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return document


def results_document(rows: list[BenchRow], options: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": RESULTS_VERSION,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": _git(Path(__file__).resolve().parent),
        "machine": machine(),
        "options": options,
        "rows": [row.document() for row in rows],
    }


def machine() -> dict[str, Any]:
    """What the figures depend on: CPUs, and how busy they were (load averages)."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpus": os.cpu_count(),
        "load_average": load,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def _git(directory: Path) -> dict[str, Any]:
    def ask(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=directory, capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError):
            return None
        return done.stdout.strip()

    status = ask("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": ask("rev-parse", "HEAD"),
        "dirty": bool(status) if status is not None else None,
    }


def rows_of(document: dict[str, Any]) -> list[BenchRow]:
    """BenchRows read back from a results document (a baseline's figures)."""
    return [
        BenchRow(
            row["name"],
            row["figure"],
            row["unit"],
            Goal(**row["goal"]) if row.get("goal") else None,
            tuple(row.get("runs", ())),
            row.get("note", ""),
        )
        for row in document.get("rows", [])
    ]


def _shown(figure: float, unit: str) -> str:
    return f"{_number(figure)} {unit}"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"
