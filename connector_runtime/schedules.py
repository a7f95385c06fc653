"""A connector's `schedule:` as an APScheduler 3 trigger, and when it next fires.

Crontab weekdays count from Sunday (0 and 7 are Sunday, 1 is Monday); APScheduler 3's
count from Monday. Numeric weekdays are therefore rewritten as names before APScheduler
sees them, so `0 9 * * 1-5` means weekdays at 09:00, as it does in crontab.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

MAX_JITTER_SECONDS = 60.0
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")
_NUMERIC_ITEM = re.compile(r"^(\*|\d+)(?:-(\d+))?(?:/(\d+))?$")


def cron_trigger(cron: str, *, jitter: float | None = None) -> CronTrigger:
    """A UTC trigger for a five-field crontab expression; ValueError if it is not one."""
    fields = cron.split()
    if len(fields) != 5:
        raise ValueError(f"need 5 fields (minute hour day month weekday), got {len(fields)}")
    minute, hour, day, month, weekday = fields
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=_weekday_names(weekday),
        timezone=UTC,
        jitter=int(jitter) if jitter else None,
    )


def _weekday_names(field: str) -> str:
    """Crontab's numeric weekdays (Sunday = 0 or 7) as names; names pass through."""
    if not any(ch.isdigit() for ch in field):
        return field
    days: set[int] = set()
    for item in field.split(","):
        match = _NUMERIC_ITEM.match(item)
        if match is None:
            raise ValueError(f"weekday {item!r}: use 0-7 (0 and 7 are Sunday) or mon-sun")
        start, end, step = match.groups()
        low = 0 if start == "*" else int(start)
        high = 6 if start == "*" else int(end or start)
        if high > 7 or low > high:
            raise ValueError(f"weekday {item!r}: use 0-7 (0 and 7 are Sunday)")
        days.update(d % 7 for d in range(low, high + 1, int(step or 1)))
    return ",".join(_WEEKDAYS[d] for d in sorted(days))


def trigger_for(schedule: float | object):
    """The trigger `serve` uses: jitter is a tenth of an interval, at most a minute, so
    connectors sharing a schedule do not all fire at the same instant."""
    cron = getattr(schedule, "cron", None)
    if cron is not None:
        return cron_trigger(cron, jitter=MAX_JITTER_SECONDS)
    jitter = int(min(schedule / 10, MAX_JITTER_SECONDS)) or None
    return IntervalTrigger(seconds=schedule, timezone=UTC, jitter=jitter)


def next_run(schedule: float | object | None, last_started: datetime | None) -> datetime | None:
    """When the schedule next fires (before jitter), an interval counted from the last
    sync's start; None for a manual-only connector or one never synced on an interval."""
    if schedule is None:
        return None
    now = datetime.now(UTC)
    cron = getattr(schedule, "cron", None)
    if cron is not None:
        return cron_trigger(cron).get_next_fire_time(None, now)
    if last_started is None:
        return None
    return max(last_started + timedelta(seconds=schedule), now)
