"""The task message on the wire: Celery's protocol 2 in JSON, and the built-in tasks' names."""

import inspect
import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from celeryd_pkg import protocol as module

REPO = Path(__file__).resolve().parents[2]


def test_task_message_is_celery_protocol_2_json():
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    body, props = module.build_message("celeryd.add", [4, 4], {"k": 1}, "id-1",
                                       reply_to="amq.rabbitmq.reply-to", countdown=10, now=now)
    args, kwargs, embed = json.loads(body)
    assert (args, kwargs) == ([4, 4], {"k": 1})
    assert embed == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    headers = props["application_headers"]
    assert headers["task"] == "celeryd.add" and headers["id"] == "id-1"
    assert headers["eta"] == "2026-01-01T00:00:10+00:00"
    assert headers["ignore_result"] is False
    assert props["content_type"] == "application/json" and props["delivery_mode"] == 2
    assert props["correlation_id"] == "id-1" and props["reply_to"] == "amq.rabbitmq.reply-to"


# Headers Celery sends that build_message leaves out, at the value Celery sends by default. The
# worker reads each with .get() and this same default (celery/worker/request.py, Celery 5.5), so
# a missing header means the same. Celery 5.3+: canvas stamping and Task.replace() nesting.
CELERY_ONLY_HEADERS = {"stamped_headers": None, "stamps": {}, "replaced_task_nesting": 0}
# Headers present in both that differ on purpose: the sender's name, shown by events and
# Flower, is anon_nodename() 'gen<pid>@<host>' in Celery and '<pid>@<host>' here.
DIFFERING_HEADERS = {"origin"}


@pytest.mark.parametrize("args, kwargs, reply_to, countdown", [
    ([4, "x", [1, 2], {"a": None}, 2.5, True], {"k": 1, "name": "text"}, module.REPLY_TO, 10),
    ([], {}, None, None),
    (["only"], {}, None, 0.25),
    (["x" * 2000], {"k": "y" * 2000}, None, None),
])
def test_task_message_matches_what_celery_itself_builds(args, kwargs, reply_to, countdown):
    from celery import Celery
    from kombu import Producer, serialization
    from kombu.entity import maybe_delivery_mode

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    app = Celery("t", set_as_current=False)
    app.conf.task_serializer = "json"
    # As Task.apply_async passes them: args a tuple; no reply wanted means ignore_result.
    celery = app.amqp.as_task_v2("id-3", "celeryd.add", tuple(args), kwargs, countdown=countdown,
                                 reply_to=reply_to, now=now, ignore_result=reply_to is None)
    body, props = module.build_message("celeryd.add", args, kwargs, "id-3", reply_to, countdown,
                                       now)

    headers = dict(props["application_headers"])
    expected = dict(celery.headers)
    for name, default in CELERY_ONLY_HEADERS.items():
        assert expected.pop(name, default) == default
    for name in DIFFERING_HEADERS:
        assert headers.pop(name).partition("@")[2] == expected.pop(name).partition("@")[2]
    assert headers == expected

    content_type, content_encoding, payload = serialization.dumps(celery.body, "json")
    assert json.loads(body) == json.loads(payload)
    assert (props["content_type"], props["content_encoding"]) == (content_type, content_encoding)
    assert props["correlation_id"] == celery.properties["correlation_id"]
    # Celery sends reply_to '' when no reply is wanted; the worker treats both as "none".
    assert props.get("reply_to", "") == celery.properties["reply_to"]
    assert props["delivery_mode"] == maybe_delivery_mode(app.conf.task_default_delivery_mode)
    # Celery sets no priority, so kombu's Producer.publish default goes on the wire.
    assert props["priority"] == inspect.signature(Producer.publish).parameters["priority"].default
    assert set(props) - {"reply_to"} == {"content_type", "content_encoding", "correlation_id",
                                        "delivery_mode", "priority", "application_headers"}


def test_no_wait_message_asks_for_no_result():
    _, props = module.build_message("celeryd.add", [], {}, "id-2")
    assert "reply_to" not in props and props["application_headers"]["eta"] is None
    assert props["application_headers"]["ignore_result"] is True


def test_a_bare_task_name_is_resolved_in_the_celeryd_namespace():
    from celeryd_pkg.submit import task_name

    assert module.NAMESPACE == "celeryd."
    assert task_name("add") == module.NAMESPACE + "add"


def test_the_worker_registers_its_built_in_tasks_under_the_same_namespace():
    from celeryd_pkg import tasks

    assert tasks.NAMESPACE is module.NAMESPACE
    # A fresh interpreter: Celery keeps every app.task() for all later apps of the process.
    code = ("import json; from celery import Celery; from celeryd_pkg import tasks; "
            "app = Celery('t', set_as_current=False); tasks.register(app); "
            "print(json.dumps(sorted(n for n in app.tasks if not n.startswith('celery.'))))")
    result = subprocess.run(["/usr/bin/python3", "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["celeryd.add", "celeryd.echo", "celeryd.mul",
                                         "celeryd.sleep", "celeryd.xsum"]
