"""Unit tests: celeryd-admin status arguments, the verdict rules, the text and JSON, and the
file of nodes seen (the broadcast is faked here; tests/integration/test_status.py asks real
workers)."""

import json
from datetime import datetime, timedelta, timezone

import pytest

from celeryd_pkg.admin import cli, fleet, status
from celeryd_pkg.broker import QueueDepth
from celeryd_pkg.errors import BrokerUnreachable
from tests.unit.admin.conftest import run

NOW = datetime(2026, 11, 30, 17, 20, 1, tzinfo=timezone.utc)
NODE_KEYS = set(fleet.REPLY_KEYS) | {"state", "last_seen"}
QUEUE_KEYS = {"name", "ready", "unacked", "consumers", "answering_consumers", "oldest_age"}


def reply(node, **changes):
    """A celeryd_status reply as the contract of issue 16 describes it."""
    answer = {"node": node, "host": node.split("@")[1], "instance": None, "version": "0.5.0",
              "celery": "5.2.6", "pid": 1234, "uptime": 11520, "concurrency": 2,
              "queues": ["celery"], "configured_queues": ["celery"], "draining": False,
              "active": 1, "held": 3, "held_by_queue": {"celery": 3}, "received": 10,
              "succeeded": 8, "failed": 1, "retried": 0}
    return {**answer, **changes}


def seen(node, minutes_ago=5, **changes):
    return {"last_seen": fleet.iso(NOW - timedelta(minutes=minutes_ago)),
            "reply": reply(node, **changes)}


HEALTHY = {"celery": QueueDepth(0, 2)}
TWO = {"a@h1": reply("a@h1"), "b@h2": reply("b@h2")}


# Arguments

def test_status_defaults_to_text_once_with_a_one_second_timeout():
    args = cli.parse_args(["status"])
    assert (args.json, args.watch, args.timeout, args.forget, args.config) == (
        False, None, 1.0, None, None)
    assert args.command_spec.action is status.action_status


@pytest.mark.parametrize("argv", [
    ["status", "--timeout", "0"], ["status", "--timeout", "61"], ["status", "--timeout", "x"],
    ["status", "--watch", "0"], ["status", "--watch", "-1"], ["status", "extra"],
    ["status", "--forget", "a@h1", "--json"], ["status", "--forget", "a@h1", "--watch", "2"],
])
def test_bad_status_arguments_exit_2_with_one_line(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("celeryd-admin: ") and err.count("\n") == 1


# The verdict

def test_a_healthy_fleet_is_ok_with_every_documented_key():
    result = fleet.report(HEALTHY, TWO, {}, NOW)
    assert (result["verdict"], result["reasons"], result["beat"]) == ("OK", [], None)
    assert result["time"] == "2026-11-30T17:20:01+00:00"
    assert list(result) == ["verdict", "reasons", "time", "nodes", "queues", "beat"]
    assert [node["node"] for node in result["nodes"]] == ["a@h1", "b@h2"]
    for node in result["nodes"]:
        assert set(node) == NODE_KEYS
        assert (node["state"], node["last_seen"]) == ("up", result["time"])
    assert result["queues"] == [{"name": "celery", "ready": 0, "unacked": 6, "consumers": 2,
                                 "answering_consumers": 2, "oldest_age": None}]
    json.dumps(result)  # plain JSON all through


def test_a_known_node_that_does_not_answer_is_silent_with_its_last_seen_time():
    result = fleet.report(HEALTHY, {"a@h1": reply("a@h1")}, {"b@h2": seen("b@h2")}, NOW)
    silent = result["nodes"][1]
    assert set(silent) == NODE_KEYS
    assert (silent["state"], silent["last_seen"]) == ("silent", "2026-11-30T17:15:01+00:00")
    # What it is is remembered; what it does now is unknown.
    assert (silent["host"], silent["version"], silent["concurrency"]) == ("h2", "0.5.0", 2)
    assert (silent["active"], silent["succeeded"], silent["uptime"]) == (None, None, None)
    assert result["verdict"] == "DEGRADED"
    # The silent node explains the consumer that did not answer: one reason, not two.
    assert result["reasons"] == ["b@h2 silent (last seen 2026-11-30 17:15:01 UTC, 5m ago)"]


def test_a_draining_node_is_reported_but_not_degraded():
    replies = {**TWO, "b@h2": reply("b@h2", draining=True, queues=[])}
    result = fleet.report({"celery": QueueDepth(0, 1)}, replies, {}, NOW)
    assert [node["state"] for node in result["nodes"]] == ["up", "draining"]
    assert (result["verdict"], result["queues"][0]["answering_consumers"]) == ("OK", 1)


def test_ready_messages_without_a_consumer_are_degraded_naming_the_queue():
    depths = {**HEALTHY, "jobs": QueueDepth(7, 0), "idle": QueueDepth(0, 0)}
    result = fleet.report(depths, TWO, {}, NOW)
    assert result["reasons"] == ["queue jobs: 7 ready, no consumer"]


def test_more_consumers_than_answering_nodes_is_degraded():
    result = fleet.report({"celery": QueueDepth(0, 3)}, TWO, {}, NOW)
    assert result["reasons"] == ["queue celery: 3 consumers, 2 of them answering (a consumer "
                                 "that does not answer celeryd_status)"]


def test_dead_tasks_and_a_missing_queue_are_degraded():
    depths = {**HEALTHY, "jobs": None, "celeryd.dead": QueueDepth(1, 0)}
    result = fleet.report(depths, TWO, {}, NOW)
    assert result["reasons"] == ["queue jobs does not exist: no worker has declared it",
                                 "1 dead task in celeryd.dead (celeryd-admin dead list)"]
    missing = result["queues"][1]
    assert (missing["ready"], missing["unacked"], missing["consumers"]) == (None, None, None)


def test_no_worker_at_all_is_degraded():
    result = fleet.report({"celery": QueueDepth(0, 0)}, {}, {}, NOW)
    assert result["reasons"][0].startswith("no worker answered")


def test_a_node_without_celeryd_status_is_up_with_its_error():
    result = fleet.report(HEALTHY, {**TWO, "old@h3": {"error": "No such command"}}, {}, NOW)
    old = result["nodes"][2]
    assert (old["state"], old["error"], old["active"]) == ("up", "No such command", None)
    assert "an older celeryd?" in fleet.render(result)


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (45, "45s"), (60, "1m"), (754, "12m"), (11520, "3h12m"), (3600, "1h00m"),
    (2 * 86400 + 4 * 3600 + 59, "2d4h"),
])
def test_uptime_is_human(seconds, text):
    assert fleet.human_duration(seconds) == text


def test_the_text_is_aligned_columns_with_the_verdict_last():
    replies = {"alpha@host-one": reply("alpha@host-one", uptime=45),
               "b@h2": reply("b@h2", succeeded=12345, draining=True)}
    result = fleet.report({"celery": QueueDepth(3, 2), "celeryd.dead": QueueDepth(0, 0)},
                          replies, {"c@h3": seen("c@h3", 190)}, NOW)
    lines = fleet.render(result).splitlines()
    assert lines[0] == "celeryd fleet at 2026-11-30 17:20:01 UTC"
    nodes, queues = lines[2:6], lines[7:10]
    assert nodes == [
        "NODE            HOST      STATE     CONC  BUSY   DONE  FAILED  UPTIME  VERSION",
        "alpha@host-one  host-one  up           2     1      8       1  45s     0.5.0",
        "b@h2            h2        draining     2     1  12345       1  3h12m   0.5.0",
        "c@h3            h3        silent       2     -      -       -  -       0.5.0  last "
        "seen 2026-11-30 14:10:01 UTC, 3h10m ago",
    ]
    assert queues == ["QUEUE         READY  UNACKED  CONSUMERS",
                      "celery            3        6          2",
                      "celeryd.dead      0        0          0"]
    assert lines[-1] == "DEGRADED: c@h3 silent (last seen 2026-11-30 14:10:01 UTC, 3h10m ago)"


# Which queues, and when to ask a second time

def test_the_queues_shown_are_the_configs_then_the_nodes_then_celeryd_dead(tmp_path):
    from celeryd_pkg import config

    main = tmp_path / "celeryd.yaml"
    main.write_text("worker:\n  queues: [jobs, celery]\n")
    settings = config.load(str(main), env={})
    replies = {"a@h1": reply("a@h1", queues=["zeta"], configured_queues=["zeta", "alpha"])}
    known = {"b@h2": seen("b@h2", configured_queues=["celery", "beta"])}
    assert status.queue_names(settings, replies, known) == [
        "jobs", "celery", "alpha", "beta", "zeta", "celeryd.dead"]


@pytest.mark.parametrize("replies, known, consumers, again", [
    (TWO, TWO, 2, False),                             # the whole fleet answered
    ({"a@h1": reply("a@h1"), "new@h3": reply("new@h3")}, TWO, 3, True),  # a new one took b's slot
    (TWO, TWO, 3, True),                              # a third consumer did not answer yet
])
def test_a_second_broadcast_only_when_a_known_node_or_a_consumer_may_still_answer(
        replies, known, consumers, again):
    depths = {"celery": QueueDepth(0, consumers), "celeryd.dead": None}
    assert status._someone_missing(replies, known, depths) is again


# The nodes remembered

def test_the_nodes_file_is_in_var_lib_celeryd_when_writable_else_the_cache(tmp_path):
    root = tmp_path / "root"
    env = {"CELERYD_ROOT": str(root), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "HOME": str(tmp_path / "home")}
    assert status.nodes_file(env) == tmp_path / "cache/celeryd/status-nodes.json"
    assert status.nodes_file({**env, "XDG_CACHE_HOME": "relative"}) == (
        tmp_path / "home/.cache/celeryd/status-nodes.json")
    (root / "var/lib/celeryd").mkdir(parents=True)
    assert status.nodes_file(env) == root / "var/lib/celeryd/status-nodes.json"


def test_the_nodes_seen_are_remembered_and_an_unreadable_file_is_a_warning(tmp_path):
    path = tmp_path / "cache/celeryd/status-nodes.json"
    assert status.load_known(path) == {}
    status.save_known(path, {"a@h1": seen("a@h1")})
    assert status.load_known(path) == {"a@h1": seen("a@h1")}
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    warnings = []
    path.write_text("{not json")
    assert status.load_known(path, warnings.append) == {}
    assert len(warnings) == 1 and str(path) in warnings[0]


def test_a_nodes_file_that_cannot_be_written_is_a_warning(tmp_path):
    (tmp_path / "file").write_text("")
    warnings = []
    status.save_known(tmp_path / "file/status-nodes.json", {}, warnings.append)
    assert len(warnings) == 1 and "will not be shown silent" in warnings[0]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The nodes file in a cache of this test's own; returns its path."""
    monkeypatch.setenv("CELERYD_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache/celeryd/status-nodes.json"


def test_forget_drops_a_node_and_an_unknown_one_is_exit_2(capsys, cache):
    status.save_known(cache, {"a@h1": seen("a@h1"), "b@h2": seen("b@h2")})
    code, out, err = run(capsys, "status", "--forget", "b@h2")
    assert (code, err) == (0, "")
    assert out == ("forgot b@h2 (last seen 2026-11-30T17:15:01+00:00): status no longer "
                   "expects it\n")
    assert list(status.load_known(cache)) == ["a@h1"]
    code, out, err = run(capsys, "status", "--forget", "b@h2")
    assert (code, out) == (2, "")
    assert err == (f"celeryd-admin: status --forget: no known node 'b@h2' in {cache} "
                   f"(known: a@h1)\n")


# The command, with the broadcast faked

@pytest.fixture
def fleet_answers(monkeypatch, cache, etc):
    """Fake gather: the test sets answers["replies"] and answers["depths"]."""
    answers = {"replies": dict(TWO), "depths": dict(HEALTHY), "timeouts": []}

    def gather(config, app, known, timeout):
        answers["timeouts"].append(timeout)
        return dict(answers["depths"]), dict(answers["replies"]), answers.get("beat")
    monkeypatch.setattr(status, "gather", gather)
    return answers


def test_status_prints_the_text_and_exits_0_when_ok(capsys, fleet_answers, etc):
    code, out, err = run(capsys, "status", "--config", str(etc[0]), "--timeout", "0.5")
    assert (code, err, fleet_answers["timeouts"]) == (0, "", [0.5])
    assert out.startswith("celeryd fleet at ") and out.endswith("\nOK\n")


def test_a_node_seen_once_and_silent_now_is_degraded_exit_1_in_text_and_json(
        capsys, fleet_answers, etc):
    assert run(capsys, "status", "--config", str(etc[0]))[0] == 0
    fleet_answers["replies"].pop("b@h2")
    code, out, err = run(capsys, "status", "--config", str(etc[0]), "--json")
    assert (code, err) == (1, "")
    result = json.loads(out)
    assert (result["verdict"], [n["state"] for n in result["nodes"]]) == (
        "DEGRADED", ["up", "silent"])
    assert result["reasons"][0].startswith("b@h2 silent (last seen ")
    code, out, err = run(capsys, "status", "--config", str(etc[0]))
    assert code == 1 and out.splitlines()[-1].startswith("DEGRADED: b@h2 silent")


def test_watch_redraws_shows_a_broker_outage_and_ctrl_c_exits_0(
        capsys, fleet_answers, etc, monkeypatch):
    outcomes = [None, BrokerUnreachable("cannot connect to broker at localhost:5672"), None]

    def gather(config, app, known, timeout):
        outcome = outcomes.pop(0)
        if outcome:
            raise outcome
        return dict(HEALTHY), dict(TWO), None
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        if not outcomes:
            raise KeyboardInterrupt
    monkeypatch.setattr(status, "gather", gather)
    monkeypatch.setattr(status.time, "sleep", sleep)
    code, out, err = run(capsys, "status", "--config", str(etc[0]), "--watch", "2", "--json")
    assert (code, err, sleeps) == (0, "", [2, 2, 2])
    lines = out.splitlines()
    assert len(lines) == 3 and lines[1] == "cannot connect to broker at localhost:5672"
    assert json.loads(lines[0])["verdict"] == json.loads(lines[2])["verdict"] == "OK"


def test_beat_is_absent_without_entries_here_or_on_record():
    assert fleet.beat_entry(False, False, None) is None
    assert fleet.beat_entry(False, False, {"fired": {}, "next": {}}) is None


def test_beat_names_the_leader_and_the_next_slots_in_order():
    state = {"leader": "web1", "since": 1764558000.0, "updated": 1764558060.0,
             "released": None, "next": {"nightly": 1764559800.0, "tick": 1764558062.0}}
    beat = fleet.beat_entry(True, True, state)
    assert (beat["leading"], beat["leader"], beat["since"]) == (
        True, "web1", "2025-12-01T03:00:00+00:00")
    assert beat["next"] == [{"entry": "tick", "at": "2025-12-01T03:01:02+00:00"},
                            {"entry": "nightly", "at": "2025-12-01T03:30:00+00:00"}]
    result = fleet.report(HEALTHY, TWO, {}, NOW, beat)
    assert result["verdict"] == "OK" and result["beat"] is beat
    text = fleet.render(result)
    assert "BEAT: celery-beat on web1 leads since 2025-12-01 03:00:00 UTC" in text
    assert "tick     2025-12-01 03:01:02 UTC" in text


def test_no_leader_with_entries_is_degraded_and_says_who_led_last():
    state = {"leader": "web1", "released": 1764558000.0, "next": {"tick": 1764558062.0}}
    beat = fleet.beat_entry(True, False, state)
    assert (beat["leading"], beat["leader"], beat["last_leader"]) == (False, None, "web1")
    result = fleet.report(HEALTHY, TWO, {}, NOW, beat)
    assert result["verdict"] == "DEGRADED"
    assert result["reasons"][-1].startswith("no celery-beat leads")
    text = fleet.render(result)
    assert ("BEAT: no celery-beat leads (the last leader, web1, let go 2025-12-01 03:00:00 "
            "UTC)") in text and "tick" not in text.split("BEAT:")[1]
