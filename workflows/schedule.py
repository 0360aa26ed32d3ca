"""Schedule triggers: a cron expression or an interval, within an optional start/end.

Config: ``{"cron": "*/5 * * * *"}`` or ``{"interval": 300}`` (seconds), plus
optional ``"start"`` / ``"end"`` ISO datetimes and ``"timezone"`` for cron
(default: the site's TIME_ZONE).
"""

from __future__ import annotations

import datetime
import zoneinfo
from typing import Any

from cronsim import CronSim, CronSimError
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from .exceptions import ConfigError

KEYS = {"cron", "interval", "start", "end", "timezone"}
#: Ten years: a longer interval is a mistake (and past datetime's range soon).
MAX_INTERVAL = 10 * 366 * 86_400


def _datetime(config: dict[str, Any], key: str) -> datetime.datetime | None:
    value = config.get(key)
    if value in (None, ""):
        return None
    parsed = parse_datetime(value) if isinstance(value, str) else None
    if parsed is None:
        raise ConfigError(f"'{key}' must be an ISO datetime such as 2026-01-31T08:00:00Z, got {value!r}.")
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed)


def _zone(config: dict[str, Any]) -> datetime.tzinfo:
    name = config.get("timezone")
    if not name:
        return timezone.get_current_timezone()
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"Unknown timezone {name!r}.") from None


def check(config: dict[str, Any]) -> None:
    unknown = sorted(set(config) - KEYS)
    if unknown:
        raise ConfigError(f"Unknown key(s) {', '.join(unknown)}; schedule keys: {', '.join(sorted(KEYS))}.")
    if ("cron" in config) == ("interval" in config):
        raise ConfigError("A schedule needs exactly one of 'cron' or 'interval'.")
    if "cron" in config:
        try:
            CronSim(str(config["cron"]), timezone.now())
        except CronSimError as exc:
            raise ConfigError(f"Invalid cron expression {config['cron']!r}: {exc}") from None
        _zone(config)
    else:
        interval = config["interval"]
        if (
            not isinstance(interval, (int, float))
            or isinstance(interval, bool)
            or not 1 <= interval <= MAX_INTERVAL
        ):
            raise ConfigError(
                f"'interval' must be a number of seconds from 1 to {MAX_INTERVAL:,} (ten years)."
            )
    start, end = _datetime(config, "start"), _datetime(config, "end")
    if start and end and end <= start:
        raise ConfigError("'end' must be after 'start'.")
    try:
        next_time(config, timezone.now())
    except (OverflowError, ValueError) as exc:  # e.g. a start in year 1
        raise ConfigError(f"The schedule's times are out of range: {exc}.") from None


def next_time(config: dict[str, Any], after: datetime.datetime) -> datetime.datetime | None:
    """The first due time strictly after ``after``, or None when the schedule has ended."""
    start, end = _datetime(config, "start"), _datetime(config, "end")
    if "interval" in config:
        interval = datetime.timedelta(seconds=float(config["interval"]))
        if start is None:
            candidate = after + interval
        elif after < start:
            candidate = start
        else:
            candidate = start + interval * ((after - start) // interval + 1)
    else:
        zone = _zone(config)
        origin = max(after, start - datetime.timedelta(microseconds=1)) if start else after
        candidate = next(CronSim(str(config["cron"]), origin.astimezone(zone)))
        candidate = candidate.astimezone(datetime.UTC)
    if end is not None and candidate > end:
        return None
    return candidate
