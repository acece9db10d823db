"""Beat entries: their checks, Every's epoch alignment, and Cron against Celery's own crontab."""

import datetime as dt
import math
import random
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from celery import Celery
from celery.schedules import crontab

from celeryd_pkg import slots as module
from celeryd_pkg.schedule import ENTRY_KEYS, Entry, check_entry, make_entry
from celeryd_pkg.slots import (Cron, Every, check_timezone, latest_due, slots_between,
                               time_zone)

# A private app, so the crontabs below never touch (or create) Celery's current app.
APP = Celery("test_schedule", set_as_current=False)
APP.conf.timezone = "UTC"
APP.conf.enable_utc = True
GOOD = {"task": "reports.nightly", "cron": "30 3 * * 1-5"}


def epoch(text):
    """Epoch seconds of an ISO time with its offset, e.g. 2026-03-29T01:00:00+00:00."""
    return datetime.fromisoformat(text).timestamp()


def utc(seconds):
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat()


def problems(body, name="nightly"):
    return check_entry(name, body)


def only(body, name="nightly"):
    """The one problem of an entry."""
    found = check_entry(name, body)
    assert len(found) == 1, found
    return found[0]


def celery_next(expression, after):
    """Celery's own answer: its crontab's remaining_estimate from last run `after`, with now =
    `after`, added to `after` (Celery counts the minute of the last run as done)."""
    minute, hour, day_of_month, month, day_of_week = expression.split()
    last = datetime.fromtimestamp(after, timezone.utc)
    entry = crontab(minute, hour, day_of_week, day_of_month, month, nowfun=lambda: last, app=APP)
    return (last + entry.remaining_estimate(last)).timestamp()


# Time zones

def test_utc_and_tz_database_names_are_time_zones():
    assert check_timezone("UTC") is None
    assert check_timezone("Europe/Berlin") is None
    assert check_timezone("Asia/Kolkata") is None
    assert time_zone("UTC") is timezone.utc
    assert datetime(2026, 7, 1, 12, tzinfo=time_zone("Europe/Berlin")).utcoffset() == timedelta(
        hours=2)


def test_unknown_time_zone_names_the_value_and_gives_examples():
    assert check_timezone("Mars/Base") == (
        "'Mars/Base' is not a time zone of the tz database (e.g. UTC, Europe/Berlin)")
    with pytest.raises(ValueError, match="'Mars/Base' is not a time zone"):
        time_zone("Mars/Base")


@pytest.mark.parametrize("value", ["/etc/localtime", "/usr/share/zoneinfo/UTC", "..",
                                   "../zoneinfo/UTC", "Europe/../Europe/Berlin", "Europe",
                                   "", "Europe/Berlin ", "utc"])
def test_paths_directories_and_near_misses_are_not_time_zones(value):
    assert "is not a time zone of the tz database" in check_timezone(value)


@pytest.mark.parametrize("value", ["localtime", "right/UTC", "right/Europe/Berlin"])
def test_the_hosts_localtime_and_leap_second_zones_are_refused(value):
    # localtime differs between hosts; right/ zones count leap seconds, Unix time does not.
    assert check_timezone(value) == (
        f"{value!r} depends on the host's setup; name the zone, e.g. Europe/Berlin")


def test_utc_needs_no_tz_database(monkeypatch):
    import zoneinfo

    def no_tzdata(key):
        raise zoneinfo.ZoneInfoNotFoundError(key)
    monkeypatch.setattr(zoneinfo, "ZoneInfo", no_tzdata)
    assert check_timezone("UTC") is None
    assert time_zone("UTC") is timezone.utc
    assert Cron("0 3 * * *").next_slot(0) == 3 * 3600
    assert "is not a time zone" in check_timezone("Europe/Berlin")


def test_a_time_zone_that_is_not_a_string_is_described():
    assert check_timezone(1) == (
        "expected a time zone name such as UTC or Europe/Berlin, got an integer")


# check_entry

def test_the_briefs_example_entries_have_no_problems():
    beat = yaml.safe_load("""
    entries:
      poll-tickets: {task: tickets.poll, every: 5}
      nightly: {task: reports.nightly, cron: "30 3 * * 1-5", args: [1], kwargs: {full: true},
                queue: reports}
    """)
    for name, body in beat["entries"].items():
        assert check_entry(name, body) == []
    assert ENTRY_KEYS == ("task", "args", "kwargs", "queue", "every", "cron")


@pytest.mark.parametrize("name", ["a", "poll-tickets", "reports.nightly:eu_1", "9" * 100])
def test_entry_names_of_the_allowed_characters_pass(name):
    assert check_entry(name, GOOD) == []


@pytest.mark.parametrize("name", ["", "-lead", ".hidden", "with space", "slash/ed", "ü",
                                  "9" * 101, 5, None])
def test_other_entry_names_are_a_problem_of_the_entry_explaining_the_characters(name):
    key, problem = only(GOOD, name)
    assert key is None
    assert problem.startswith(f"entry name {repr(name)[:20]}")
    assert problem.endswith(" must be 1-100 letters, digits, '_', '.', ':' or '-', starting "
                            "with a letter or digit")


@pytest.mark.parametrize("body, kind", [(["tickets.poll"], "a list"), ("tickets.poll", "a string"),
                                        (5, "an integer"), (None, "nothing")])
def test_a_body_that_is_not_a_mapping_is_described_by_its_kind(body, kind):
    assert only(body) == (None, "expected a mapping of task, args, kwargs, queue and every or "
                                f"cron, got {kind}")


def test_a_bad_name_and_a_bad_body_are_both_reported():
    assert [key for key, _ in check_entry("a b", [])] == [None, None]


def test_an_unknown_key_is_named_with_the_keys_expected():
    assert only({**GOOD, "tsk": "x"}) == (
        "tsk", "unknown task option 'tsk' (expected one of task, args, kwargs, queue, every, cron)")


def test_the_task_is_required():
    key, problem = only({"every": 5})
    assert (key, problem.startswith("is required")) == ("task", True)


@pytest.mark.parametrize("task, expected", [
    ("", "expected a task name without spaces, got ''"),
    ("reports nightly", "expected a task name without spaces, got 'reports nightly'"),
    ("reports.nightly\n", "expected a task name without spaces, got 'reports.nightly\\n'"),
    (5, "expected a task name, got an integer"),
    (None, "expected a task name, got nothing"),
])
def test_the_task_is_a_non_empty_name_without_whitespace(task, expected):
    assert only({**GOOD, "task": task}) == ("task", expected)


def test_args_must_be_a_list():
    assert only({**GOOD, "args": {"a": 1}}) == (
        "args", "expected a list of arguments, got a mapping")
    assert only({**GOOD, "args": "1, 2"}) == ("args", "expected a list of arguments, got a string")


def test_kwargs_must_be_a_mapping_with_string_keys():
    assert only({**GOOD, "kwargs": [1]}) == (
        "kwargs", "expected a mapping of keyword arguments, got a list")
    assert only({**GOOD, "kwargs": {1: "one"}}) == (
        "kwargs", "keyword names must be strings, got 1")


def test_a_yaml_date_in_args_or_kwargs_is_not_json_and_the_fix_is_named():
    body = yaml.safe_load(
        "{task: t, every: 5, args: [2026-03-29], kwargs: {at: 2026-03-29 02:30:00}}")
    assert check_entry("nightly", body) == [
        ("args", "datetime.date(2026, 3, 29) is not JSON (a date/time); quote it"),
        ("kwargs", "datetime.datetime(2026, 3, 29, 2, 30) is not JSON (a date/time); quote it"),
    ]
    quoted = yaml.safe_load("{task: t, every: 5, args: ['2026-03-29']}")
    assert check_entry("nightly", quoted) == []


def test_other_values_json_cannot_write_are_problems_not_tracebacks():
    looped = []
    looped.append(looped)
    assert only({**GOOD, "args": [{1, 2}]}) == ("args", "{1, 2} is not JSON (a set)")
    assert only({**GOOD, "args": looped})[0] == "args"
    assert only({**GOOD, "kwargs": {"by_day": {dt.date(2026, 1, 1): 1}}})[0] == "kwargs"


@pytest.mark.parametrize("queue, expected", [
    ("", "expected a queue name without spaces, got ''"),
    ("my queue", "expected a queue name without spaces, got 'my queue'"),
    (["reports"], "expected a queue name, got a list"),
])
def test_the_queue_is_a_non_empty_name_without_whitespace(queue, expected):
    assert only({**GOOD, "queue": queue}) == ("queue", expected)


@pytest.mark.parametrize("every, expected", [
    (-5, "must be at least 1 second, got -5"),
    (0, "must be at least 1 second, got 0"),
    (True, "expected a whole number of seconds, got a boolean"),
    (2.5, "expected a whole number of seconds, got a number (2.5)"),
    ("5", "expected a whole number of seconds, got a string"),
    (10 ** 400, f"must be at most {10 * 365 * 86400} seconds (ten years), got {10 ** 400}"),
])
def test_every_is_a_whole_number_of_seconds_at_least_one(every, expected):
    assert only({"task": "t", "every": every}) == ("every", expected)


def test_every_from_one_second_to_ten_years_is_allowed():
    assert check_entry("tick", {"task": "t", "every": 1}) == []
    assert check_entry("tick", {"task": "t", "every": 10 * 365 * 86400}) == []
    assert module.MAX_EVERY == 10 * 365 * 86400


def test_neither_every_nor_cron_is_a_problem_of_the_entry():
    assert only({"task": "t"}) == (None, 'needs every: SECONDS or cron: "m h dom mon dow"')


def test_both_every_and_cron_is_a_problem_of_the_entry():
    assert only({**GOOD, "every": 5}) == (None, "has both every and cron; keep one")


def test_every_problem_of_an_entry_is_reported_at_once_each_with_its_key():
    found = check_entry("x", {"task": "a b", "args": 1, "kwargs": 1, "queue": "", "every": 0,
                              "cron": "61 * * * *", "retries": 3})
    assert [key for key, _ in found] == ["retries", "task", "args", "kwargs", "queue", "every",
                                        "cron", None]


def test_a_bad_cron_field_is_named_with_celerys_own_reason():
    # Celery's crontab_parser says "Invalid end range: 61 > 59." (5.2 and 5.5 alike).
    assert only({"task": "t", "cron": "61 * * * *"}) == (
        "cron", "'61 * * * *': minute field '61': Invalid end range: 61 > 59.")


@pytest.mark.parametrize("expression, field", [
    ("0 24 * * *", "hour field '24'"),
    ("0 0 0 * *", "day-of-month field '0'"),
    ("0 0 * 13 *", "month field '13'"),
    ("0 0 * * 7", "day-of-week field '7'"),  # Celery's days of week are 0-6, Sunday = 0
    ("0 0 * * funday", "day-of-week field 'funday'"),
    ("*/x * * * *", "minute field '*/x'"),
    ("*/0 * * * *", "minute field '*/0'"),
    ("1,,2 * * * *", "minute field '1,,2'"),
    ("-1 * * * *", "minute field '-1'"),
])
def test_each_bad_cron_field_is_named_in_one_line(expression, field):
    key, problem = only({"task": "t", "cron": expression})
    assert key == "cron"
    assert problem.startswith(f"{expression!r}: {field}: ")
    assert "\n" not in problem and len(problem) > len(f"{expression!r}: {field}: ")
    with pytest.raises(ValueError) as info:
        Cron(expression)
    assert str(info.value) == problem


@pytest.mark.parametrize("expression, count", [("0 0 * *", 4), ("0 0 * * * *", 6), ("", 0)])
def test_a_cron_expression_needs_exactly_five_fields(expression, count):
    assert only({"task": "t", "cron": expression}) == (
        "cron", f'{expression!r}: expected 5 fields "m h dom mon dow", got {count}')


def test_a_cron_that_is_not_a_string_is_described():
    assert only({"task": "t", "cron": 5}) == (
        "cron", 'expected a string "m h dom mon dow", got an integer')


def test_long_values_are_shown_cut_to_about_sixty_characters():
    _, problem = only({"task": "t", "every": 5, "queue": "q " * 100})
    assert problem.startswith("expected a queue name without spaces, got 'q q ")
    assert len(problem) < 120


# Every

def test_every_fires_at_multiples_of_its_period_since_the_epoch():
    assert Every(5).next_slot(0) == 5
    assert Every(5).next_slot(3) == 5
    assert Every(5).next_slot(-3) == 0
    assert utc(Every(86400).next_slot(epoch("2026-03-29T12:34:56+00:00"))) == (
        "2026-03-30T00:00:00+00:00")
    assert utc(Every(3600).next_slot(epoch("2026-03-29T12:34:56+02:00"))) == (
        "2026-03-29T11:00:00+00:00")


def test_every_is_strictly_after_so_a_time_on_a_slot_gives_the_next_one():
    slot = epoch("2026-03-30T00:00:00+00:00")
    assert Every(86400).next_slot(slot) == slot + 86400
    assert Every(5).next_slot(10) == 15


def test_every_is_exact_for_floats_next_to_a_slot():
    for seconds in (1, 5, 7, 60, 86400):
        for k in (1, 3, 20542, 20542 * 86400 // seconds, 10 ** 9 + 7):
            slot = float(k * seconds)
            assert Every(seconds).next_slot(math.nextafter(slot, -math.inf)) == slot
            assert Every(seconds).next_slot(slot) == slot + seconds
            assert Every(seconds).next_slot(math.nextafter(slot, math.inf)) == slot + seconds
            assert Every(seconds).next_slot(slot - 0.5) == slot


def test_every_compares_by_period_and_rejects_bad_periods():
    assert Every(5) == Every(5) and Every(5) != Every(6) and Every(60) != Cron("* * * * *")
    assert repr(Every(5)) == "Every(5)"
    for bad in (0, -1, 1.5, True, "5", 10 * 365 * 86400 + 1):
        with pytest.raises(ValueError):
            Every(bad)


# Cron, checked against Celery

CRONS = ["* * * * *", "*/15 * * * *", "30 3 * * 1-5", "0 0 1 * *", "5,35 8-17/2 * * mon-fri",
         "0 12 13 * 5", "0 0 29 2 *", "59 23 31 * *", "0 6 1-7 * 1", "15 10 * 3,9 sun",
         "0 */6 15 * *", "45 23 * 12 6", "0 0 * * 0", "1-5 0 * * *", "7 7 7 7 *",
         "0 9 * * sat-mon", "0 0 1,15 * wed", "30 1 * 1-3,10-12 *"]


@pytest.mark.parametrize("expression", CRONS)
def test_cron_agrees_with_celerys_crontab_in_utc(expression):
    rng = random.Random(expression)  # the same times at every run
    start = datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp()
    times = [start + rng.randrange(5 * 365 * 86400) + rng.choice((0, 0.25, rng.random()))
             for _ in range(150)]
    # And the edges: on a slot, a second before midnight, the end of a month and a leap year.
    times += [epoch(t) for t in ("2025-12-31T23:59:59+00:00", "2024-02-28T23:59:00+00:00",
                                 "2024-02-29T23:59:00+00:00", "2026-03-13T12:00:00+00:00",
                                 "2026-01-31T23:59:30+00:00", "2026-06-30T00:00:00+00:00")]
    rule = Cron(expression)
    for after in times:
        assert rule.next_slot(after) == celery_next(expression, after), utc(after)


def test_a_chain_of_slots_agrees_with_celery_from_each_slot_to_the_next():
    rule, after = Cron("5,35 8-17/2 * * mon-fri"), epoch("2026-01-01T00:00:00+00:00")
    for _ in range(200):
        expected = celery_next("5,35 8-17/2 * * mon-fri", after)
        after = rule.next_slot(after)
        assert after == expected


def test_day_names_are_celerys_with_sunday_zero():
    monday = epoch("2026-03-30T00:00:00+00:00")  # 2026-03-30 is a Monday
    weekdays = slots_between(Cron("0 8 * * mon-fri"), monday - 1, monday + 7 * 86400)
    assert [utc(s)[:10] for s in weekdays] == [
        "2026-03-30", "2026-03-31", "2026-04-01", "2026-04-02", "2026-04-03"]
    assert utc(Cron("0 8 * * 0").next_slot(monday)) == "2026-04-05T08:00:00+00:00"  # Sunday
    assert Cron("0 8 * * sun") == Cron("0 8 * * 0") and Cron("0 8 * * 1-5") == Cron(
        "0 8 * * mon-fri")


def test_month_names_are_taken_exactly_as_the_installed_celery_takes_them():
    try:
        crontab(month_of_year="jan")
    except ValueError:  # Celery before 5.5 knows day names only
        key, problem = only({"task": "t", "cron": "0 0 1 jan *"})
        assert key == "cron" and problem.startswith("'0 0 1 jan *': month field 'jan': ")
    else:
        assert utc(Cron("0 0 1 jan *").next_slot(epoch("2026-06-01T00:00:00+00:00"))) == (
            "2027-01-01T00:00:00+00:00")


def test_day_of_month_and_day_of_week_must_both_match_as_in_celery():
    # Friday the 13th: in 2026 only February, March and November begin on a Sunday. Vixie
    # cron would also fire on every Friday and every 13th.
    expression = "0 12 13 * fri"
    slots = slots_between(Cron(expression), epoch("2026-01-01T00:00:00+00:00"),
                          epoch("2026-12-31T23:59:00+00:00"))
    assert [utc(s) for s in slots] == ["2026-02-13T12:00:00+00:00", "2026-03-13T12:00:00+00:00",
                                       "2026-11-13T12:00:00+00:00"]
    starts = [epoch("2026-01-01T00:00:00+00:00")] + slots[:-1]
    assert [celery_next(expression, start) for start in starts] == slots


def test_february_29_on_a_monday_is_found_years_ahead():
    # 2016-02-29 was a Monday; the calendar repeats 28 years later, with no century between.
    after = epoch("2026-01-01T00:00:00+00:00")
    assert utc(Cron("0 0 29 2 1").next_slot(after)) == "2044-02-29T00:00:00+00:00"
    assert celery_next("0 0 29 2 1", after) == epoch("2044-02-29T00:00:00+00:00")


@pytest.mark.parametrize("expression", ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4,6,9,11 *"])
def test_an_expression_matching_no_date_is_refused_not_looped_on(expression):
    assert only({"task": "t", "cron": expression}) == (
        "cron", f"{expression!r} never matches a date")
    with pytest.raises(ValueError, match="never matches a date"):
        Cron(expression, "Europe/Berlin")


def test_next_slot_gives_up_after_its_span_of_years(monkeypatch):
    monkeypatch.setattr(module, "CYCLE_YEARS", 5)  # the next Monday February 29 is in 2044
    with pytest.raises(ValueError, match="'0 0 29 2 1' never matches a time in UTC"):
        Cron("0 0 29 2 1").next_slot(epoch("2026-01-01T00:00:00+00:00"))


def test_cron_is_fast_for_every_minute_and_for_rare_dates():
    every_minute = slots_between(Cron("* * * * *", "Europe/Berlin"), 0, 10 ** 10)
    assert len(every_minute) == module.SLOT_LIMIT
    assert every_minute[-1] - every_minute[0] == 60 * (module.SLOT_LIMIT - 1)
    assert len(slots_between(Cron("0 0 29 2 1"), 0, epoch("2400-01-01T00:00:00+00:00"))) > 10


# Cron on a time zone's wall clock

def test_spring_gap_the_nonexistent_time_is_skipped():
    # Europe/Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST, so 02:30 does not exist.
    rule = Cron("30 2 * * *", "Europe/Berlin")
    slots = slots_between(rule, epoch("2026-03-27T12:00:00+00:00"),
                          epoch("2026-03-31T12:00:00+00:00"))
    assert [utc(s) for s in slots] == [
        "2026-03-28T01:30:00+00:00",  # 02:30 CET
        "2026-03-30T00:30:00+00:00",  # 02:30 CEST; none on the 29th
        "2026-03-31T00:30:00+00:00"]


def test_spring_gap_a_quarter_hourly_cron_goes_from_0145_to_0300_local():
    rule = Cron("*/15 * * * *", "Europe/Berlin")
    slots = slots_between(rule, epoch("2026-03-29T01:30:00+01:00"),
                          epoch("2026-03-29T03:30:00+02:00"))
    assert [utc(s) for s in slots] == [
        "2026-03-29T00:45:00+00:00",  # 01:45 CET
        "2026-03-29T01:00:00+00:00",  # 03:00 CEST
        "2026-03-29T01:15:00+00:00",
        "2026-03-29T01:30:00+00:00"]


def test_autumn_fold_a_repeated_time_fires_once_at_its_first_occurrence():
    # Europe/Berlin, 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:30 comes twice,
    # at 00:30 UTC and at 01:30 UTC.
    rule = Cron("30 2 * * *", "Europe/Berlin")
    slots = slots_between(rule, epoch("2026-10-24T12:00:00+00:00"),
                          epoch("2026-10-26T12:00:00+00:00"))
    assert [utc(s) for s in slots] == ["2026-10-25T00:30:00+00:00",  # 02:30 CEST
                                       "2026-10-26T01:30:00+00:00"]  # 02:30 CET
    # Asked during the second 02:10 (CET), the next 02:30 is the next day's.
    assert utc(rule.next_slot(epoch("2026-10-25T01:10:00+00:00"))) == "2026-10-26T01:30:00+00:00"


def test_autumn_fold_a_half_hourly_cron_skips_the_repeated_hour():
    rule = Cron("*/30 * * * *", "Europe/Berlin")
    slots = slots_between(rule, epoch("2026-10-25T01:59:00+02:00"),
                          epoch("2026-10-25T03:00:00+01:00"))
    assert [utc(s) for s in slots] == [
        "2026-10-25T00:00:00+00:00",  # 02:00 CEST
        "2026-10-25T00:30:00+00:00",  # 02:30 CEST
        "2026-10-25T02:00:00+00:00"]  # 03:00 CET; 02:00 and 02:30 CET are repeats


def test_a_time_zone_with_a_half_hour_offset():
    # Asia/Kolkata is UTC+05:30 all year.
    after = epoch("2026-01-01T00:00:00+00:00")  # 05:30 IST
    assert utc(Cron("0 9 * * *", "Asia/Kolkata").next_slot(after)) == "2026-01-01T03:30:00+00:00"
    slots = slots_between(Cron("*/45 * * * *", "Asia/Kolkata"), after, after + 3600)
    assert [utc(s) for s in slots] == ["2026-01-01T00:15:00+00:00",  # 05:45 IST
                                       "2026-01-01T00:30:00+00:00"]  # 06:00 IST


def test_the_day_and_time_are_the_time_zones_east_and_west_of_utc():
    # Monday 00:30 in Berlin is still Sunday in UTC.
    rule = Cron("30 0 * * mon", "Europe/Berlin")
    assert utc(rule.next_slot(epoch("2026-06-27T00:00:00+00:00"))) == "2026-06-28T22:30:00+00:00"
    # 23:00 on Monday 2026-06-01 in New York (EDT, UTC-4) is already Tuesday 03:00 in UTC:
    # Monday's 23:30 and Tuesday's 12:00 are still to come.
    after = epoch("2026-06-01T23:00:00-04:00")
    assert utc(Cron("30 23 * * *", "America/New_York").next_slot(after)) == (
        "2026-06-02T03:30:00+00:00")
    assert utc(Cron("0 12 * * *", "America/New_York").next_slot(after)) == (
        "2026-06-02T16:00:00+00:00")
    assert utc(Cron("30 23 * * mon", "America/New_York").next_slot(after)) == (
        "2026-06-02T03:30:00+00:00")


def test_cron_compares_by_its_expanded_fields_and_zone():
    assert Cron("*/15 * * * *") == Cron("0,15,30,45 * * * *")
    assert Cron("0 3 * * *") != Cron("0 3 * * *", "Europe/Berlin")
    assert Cron("0 3 * * *") != Cron("0 4 * * *")
    assert len({Cron("*/15 * * * *"), Cron("0,15,30,45 * * * *")}) == 1
    assert repr(Cron("0 3 * * *", "Europe/Berlin")) == "Cron('0 3 * * *', 'Europe/Berlin')"


def test_cron_refuses_an_unknown_time_zone():
    with pytest.raises(ValueError, match="'Mars/Base' is not a time zone"):
        Cron("0 3 * * *", "Mars/Base")


# make_entry and slots_between

def test_make_entry_fills_the_defaults_and_builds_the_rule():
    entry = make_entry("poll", {"task": "tickets.poll", "every": 5}, "Europe/Berlin", "celery")
    assert entry == Entry("poll", "tickets.poll", [], {}, "celery", Every(5))
    body = {"task": "reports.nightly", "cron": "30 3 * * 1-5", "args": [1],
            "kwargs": {"full": True}, "queue": "reports"}
    entry = make_entry("nightly", body, "Europe/Berlin", "celery")
    assert entry == Entry("nightly", "reports.nightly", [1], {"full": True}, "reports",
                          Cron("30 3 * * 1-5", "Europe/Berlin"))
    assert entry.args is not body["args"] and entry.kwargs is not body["kwargs"]


def test_a_reload_with_the_same_entry_compares_equal_and_a_changed_one_does_not():
    body = {"task": "t", "cron": "0 3 * * *"}
    assert make_entry("n", body, "UTC", "celery") == make_entry("n", dict(body), "UTC", "celery")
    assert (make_entry("n", body, "UTC", "celery")
            != make_entry("n", body, "Europe/Berlin", "celery"))


def test_slots_between_excludes_the_start_and_includes_the_end():
    assert slots_between(Every(5), 10, 30) == [15, 20, 25, 30]
    assert slots_between(Every(5), 10, 14.999) == []
    assert slots_between(Every(5), 10.5, 30.5) == [15, 20, 25, 30]
    assert slots_between(Cron("0 * * * *"), 0, 3 * 3600) == [3600, 7200, 10800]


def test_slots_between_returns_the_earliest_up_to_its_limit_to_continue_from():
    first = slots_between(Every(1), 0, 10 ** 6)
    assert len(first) == module.SLOT_LIMIT and first[0] == 1 and first[-1] == module.SLOT_LIMIT
    assert slots_between(Every(1), first[-1], 10 ** 6)[0] == module.SLOT_LIMIT + 1
    assert slots_between(Every(1), 0, 10, limit=3) == [1, 2, 3]


def test_latest_due_is_the_last_slot_up_to_now_with_the_number_skipped_before_it():
    assert latest_due(Every(10), 1000.5, 1005) == (None, 0, None)
    assert latest_due(Every(10), 1000.5, 1010) == (1010.0, 0, 1010.0)
    assert latest_due(Every(10), 1000.5, 1035) == (1030.0, 2, 1010.0)
    # A stall of 20,000 slots, past slots_between's limit: still the latest, counted exactly.
    assert latest_due(Every(1), 1000.5, 21000.5) == (21000.0, 19999, 1001.0)
    assert latest_due(Cron("* * * * *"), 0, 60 * 15000 + 30) == (900000.0, 14999, 60.0)
    assert latest_due(Cron("0 * * * *"), 0, 3 * 3600 + 5) == (10800.0, 2, 3600.0)
