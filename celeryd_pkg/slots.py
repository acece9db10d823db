"""Slot times aligned to the clock: every N seconds since the epoch, or a cron expression
on a time zone's wall clock. Every scheduler host computes the same slots."""

import calendar
import math
import re
from datetime import date, datetime, timezone

__all__ = ["Every", "Cron", "SLOT_LIMIT", "MAX_EVERY", "CRON_FORM", "check_timezone",
           "time_zone", "slots_between", "latest_due", "shown_value", "kind_of"]

# A tz database name: no dots, so nothing zoneinfo would read as a path ("..", "/etc/...").
ZONE = re.compile(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*")
# The five crontab fields in order, each as named in messages and as Celery's crontab calls it.
FIELDS = (("minute", "minute"), ("hour", "hour"), ("day-of-month", "day_of_month"),
          ("month", "month_of_year"), ("day-of-week", "day_of_week"))
CRON_FORM = '"m h dom mon dow"'
# Days a month can have at most (February 29 exists, in leap years).
MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
# The Gregorian calendar repeats every 400 years, weekdays included: a date pattern that
# matches at all matches within that many years of any start.
CYCLE_YEARS = 400
# slots_between returns at most this many slots (the earliest): the caller continues from
# the last one, so a long outage is caught up in bounded pieces.
SLOT_LIMIT = 10000
# The longest every: (ten years); a larger one is a typo, and a huge one overflows a float.
MAX_EVERY = 10 * 365 * 86400
SHOWN = 60  # characters of a value quoted in a message

def shown_value(value):
    """Return value's repr for a message, cut to about SHOWN characters."""
    text = repr(value)
    return text if len(text) <= SHOWN else text[:SHOWN - 3] + "..."


def kind_of(value):
    """Describe value's type for a message: "a string", "an integer", "a list"."""
    if value is None:
        return "nothing"
    for types, text in ((bool, "a boolean"), (int, "an integer"), (float, "a number"),
                        (str, "a string"), (list, "a list"), (dict, "a mapping"),
                        (date, "a date/time")):  # a datetime is a date too
        if isinstance(value, types):
            return text
    return f"a {type(value).__name__}"


def check_timezone(value):
    """Return what is wrong with a time zone name, or None."""
    if not isinstance(value, str):
        return f"expected a time zone name such as UTC or Europe/Berlin, got {kind_of(value)}"
    if value == "UTC":  # valid without tzdata installed
        return None
    # localtime is this host's /etc/localtime, which other hosts may not share; right/ zones
    # count leap seconds, which Unix time does not (zoneinfo puts their DST changes 27 s late).
    if value == "localtime" or value.startswith("right/"):
        return f"{shown_value(value)} depends on the host's setup; name the zone, e.g. Europe/Berlin"
    problem = f"{shown_value(value)} is not a time zone of the tz database (e.g. UTC, Europe/Berlin)"
    if not ZONE.fullmatch(value):
        return problem
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(value)
    except (ValueError, KeyError, OSError):  # not found (a KeyError), a directory, not TZif
        return problem
    return None


def time_zone(name):
    """Return the tzinfo of a time zone name check_timezone accepts; raise ValueError."""
    problem = check_timezone(name)
    if problem:
        raise ValueError(problem)
    if name == "UTC":
        return timezone.utc
    import zoneinfo

    return zoneinfo.ZoneInfo(name)


def _parse_cron(expression):
    """Return the expanded (minutes, hours, days of month, months, days of week) of a cron
    expression (sorted tuples, a set for the weekdays) as Celery's crontab parses them."""
    from celery.schedules import crontab

    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"{shown_value(expression)}: expected 5 fields {CRON_FORM}, got {len(fields)}")
    parsed = []
    for (label, attribute), field in zip(FIELDS, fields):
        try:
            values = getattr(crontab(**{attribute: field}), attribute)
        # Celery's parser raises ValueError, its own ParseException (not a ValueError) and,
        # for odd input, whatever int() or a slice raises: all mean a bad field.
        except Exception as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            raise ValueError(f"{shown_value(expression)}: {label} field {field!r}: {reason}") from None
        parsed.append(tuple(sorted(values)))
    minutes, hours, days, months, weekdays = parsed
    if not any(day <= MONTH_DAYS[month - 1] for month in months for day in days):
        raise ValueError(f"{shown_value(expression)} never matches a date")
    return minutes, hours, days, months, frozenset(weekdays)


class Every:
    """Every N seconds, at the multiples of N since the Unix epoch (so every: 86400 fires at
    00:00 UTC): every host computes the same slots."""

    def __init__(self, seconds):
        if type(seconds) is not int or not 1 <= seconds <= MAX_EVERY:  # bool is no int here
            raise ValueError(f"every must be 1 to {MAX_EVERY} whole seconds, got {shown_value(seconds)}")
        self.seconds = seconds

    def next_slot(self, after):
        """Return the first multiple of seconds strictly after `after` (epoch seconds)."""
        # An integer k*seconds exceeds `after` exactly when it exceeds floor(after): integers
        # throughout, so a float `after` cannot round onto the wrong side of a slot.
        return float((math.floor(after) // self.seconds + 1) * self.seconds)

    def __eq__(self, other):
        return isinstance(other, Every) and other.seconds == self.seconds

    def __hash__(self):
        return hash((Every, self.seconds))

    def __repr__(self):
        return f"Every({self.seconds})"


class Cron:
    """A cron expression "m h dom mon dow" in Celery's crontab syntax and semantics, on the
    wall clock of a time zone."""

    # Celery ANDs day of month and day of week (unlike Vixie cron, which ORs them when both
    # are restricted): celery/schedules.py, crontab.remaining_delta requires month, day and
    # dow_num (isoweekday() % 7, Sunday = 0) all in their sets for execute_this_date, and
    # crontab._delta_to_next walks the day_of_month x month_of_year dates and skips those
    # whose weekday is not in day_of_week; its docstring: day_of_week 1 and day_of_month
    # "1-7,15-21" is "every first and third Monday". Same in Celery 5.2 and 5.5.

    def __init__(self, expression, timezone="UTC"):
        if not isinstance(expression, str):
            raise ValueError(f'expected a string {CRON_FORM}, got {kind_of(expression)}')
        self.minutes, self.hours, self.days, self.months, self.weekdays = _parse_cron(expression)
        self.expression = expression
        self.timezone = timezone
        self._tz = time_zone(timezone)

    def next_slot(self, after):
        """Return the epoch seconds of the first minute strictly after `after` whose wall
        clock matches. A time in a daylight-saving gap does not exist and is skipped; a time
        that occurs twice fires at its first occurrence only."""
        start = datetime.fromtimestamp(after, self._tz)
        today = (start.year, start.month, start.day)
        # Only candidate dates are visited: the months, then days, in order; _parse_cron made
        # sure one exists, so the loop ends within CYCLE_YEARS unless every match falls in a
        # daylight-saving gap.
        for year in range(start.year, start.year + CYCLE_YEARS + 1):
            for month in self.months:
                if (year, month) < today[:2]:
                    continue
                last = calendar.monthrange(year, month)[1]
                for day in self.days:
                    if day > last:
                        break
                    if (year, month, day) < today:
                        continue
                    if date(year, month, day).isoweekday() % 7 not in self.weekdays:
                        continue
                    slot = self._first_time(year, month, day, after,
                                            (year, month, day) == today and start)
                    if slot is not None:
                        return slot
        raise ValueError(f"{shown_value(self.expression)} never matches a time in {self.timezone}")

    def _first_time(self, year, month, day, after, start):
        """Return the first matching time of one date strictly after `after`, or None.
        On the date of `after` (start is its wall clock) earlier minutes are skipped unseen:
        an existing wall time before start's is also earlier in real time."""
        for hour in self.hours:
            if start and hour < start.hour:
                continue
            for minute in self.minutes:
                if start and (hour, minute) <= (start.hour, start.minute):
                    continue
                wall = datetime(year, month, day, hour, minute, tzinfo=self._tz)  # fold=0: first
                slot = wall.timestamp()
                if slot <= after:  # the second pass of a repeated hour reaches back here
                    continue
                # A wall time in a spring-forward gap maps to an instant whose wall time differs.
                if datetime.fromtimestamp(slot, self._tz).replace(tzinfo=None) == wall.replace(
                        tzinfo=None):
                    return slot
        return None

    def _key(self):  # the expanded sets, as Celery's crontab compares: */15 is 0,15,30,45
        return (self.minutes, self.hours, self.days, self.months, self.weekdays, self.timezone)

    def __eq__(self, other):
        return isinstance(other, Cron) and other._key() == self._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return f"Cron({self.expression!r}, {self.timezone!r})"


def slots_between(rule, start, end, limit=SLOT_LIMIT):
    """Return the slots s of rule with start < s <= end, in order: the earliest `limit` of
    them (continue from the last one for more)."""
    slots, slot = [], rule.next_slot(start)
    while slot <= end and len(slots) < limit:
        slots.append(slot)
        slot = rule.next_slot(slot)
    return slots


def latest_due(rule, after, now):
    """Return (the latest slot in (after, now], how many slots before it, the first) or
    (None, 0, None): a scheduler held up sends the latest slot only, as Celery's beat does."""
    if isinstance(rule, Every):  # by arithmetic: a long stall may cover millions of slots
        first = rule.next_slot(after)
        latest = float(math.floor(now / rule.seconds) * rule.seconds)
        if first > now:
            return None, 0, None
        return latest, round((latest - first) / rule.seconds), first
    due = slots_between(rule, after, now)
    if not due:
        return None, 0, None
    first, skipped = due[0], 0
    while len(due) == SLOT_LIMIT:  # a cron slot is a minute at least: a chunk is a week
        more = slots_between(rule, due[-1], now)
        if not more:
            break
        skipped, due = skipped + len(due), more
    return due[-1], skipped + len(due) - 1, first
