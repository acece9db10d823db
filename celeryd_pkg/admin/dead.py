"""celeryd-admin dead list|requeue ID|purge: the tasks a worker moved to celeryd.dead.

A task whose worker process died on each of its tasks.max_redeliveries deliveries waits in the
durable queue celeryd.dead (celeryd_pkg.poison). These commands use the configured account
through py-amqp. `list` reads without consuming: it fetches every message unacked, and closing
the channel puts them all back. `requeue` sends one back where it came from, with a fresh
count, then removes the dead copy; `purge` empties the queue.
"""

import json
from contextlib import contextmanager

from celeryd_pkg import config as config_module
from celeryd_pkg.admin.cli import Command, config_option
from celeryd_pkg.errors import BrokerUnreachable, CelerydError, UsageError

__all__ = ["COMMANDS", "describe", "format_line", "read_dead", "action_dead"]


def describe(message):
    """Given a message from celeryd.dead, return what an operator needs to know about it."""
    from celeryd_pkg import poison

    headers = message.headers or {}
    return {
        "id": headers.get("id") or message.properties.get("correlation_id"),
        "task": headers.get("task"),
        "queue": headers.get(poison.ORIGIN_QUEUE),
        "deliveries": headers.get(poison.DELIVERIES),
        "reason": headers.get(poison.REASON),
        "dead_at": headers.get(poison.DEAD_AT),
        "args": headers.get("argsrepr"),
        "kwargs": headers.get("kwargsrepr"),
    }


def format_line(entry):
    """One line of `dead list`: id, task, origin queue, deliveries, dead-at, reason."""
    return (f"{entry['id']} {entry['task']} from queue {entry['queue']}, "
            f"{entry['deliveries']} deliveries, dead at {entry['dead_at']}: {entry['reason']}")


@contextmanager
def read_dead(connection):
    """Yield the messages in celeryd.dead, fetched unacked on a channel of their own ([] when
    the queue does not exist yet), and the channel; closing it on exit puts back every message
    not acked on it."""
    import amqp

    from celeryd_pkg.poison import DEAD_QUEUE

    channel = connection.channel()
    try:
        try:
            channel.queue_declare(DEAD_QUEUE, passive=True)
        except amqp.exceptions.NotFound:
            yield channel, []
            return
        messages = []
        while True:
            message = channel.basic_get(DEAD_QUEUE, no_ack=False)
            if message is None:
                break
            messages.append(message)
        yield channel, messages
    finally:
        if channel.is_open:
            channel.close()


def list_dead(settings, connection, args):
    with read_dead(connection) as (_, messages):
        entries = [describe(message) for message in messages]
    if args.json:
        print(json.dumps(entries, sort_keys=True))
        return 0
    for entry in entries:
        print(format_line(entry))
    if not entries:
        print("no dead tasks")
    return 0


def requeue_dead(settings, connection, args):
    import amqp

    from celeryd_pkg.poison import DEAD_QUEUE, Publisher, Unroutable, origin_copy

    with read_dead(connection) as (channel, messages):
        found = [m for m in messages if describe(m)["id"] == args.id]
        if not found:
            raise UsageError(f"celeryd-admin: dead requeue: no task {args.id} in {DEAD_QUEUE} "
                             f"(celeryd-admin dead list)")
        copy = origin_copy(found[0])
        try:
            Publisher(connection, settings.broker.connect_timeout).publish(copy)
        except (Unroutable, amqp.exceptions.NotFound):
            raise BrokerUnreachable(
                f"celeryd-admin: dead requeue {args.id}: no queue takes exchange "
                f"'{copy.exchange}' routing key '{copy.routing_key}' any more: is a worker "
                f"consuming it? The task stays in {DEAD_QUEUE}") from None
        # Only once the broker confirmed the copy: never neither of the two.
        channel.basic_ack(found[0].delivery_tag)
    entry = describe(found[0])
    print(f"requeued {entry['task']}[{args.id}] to queue {entry['queue']}")
    return 0


def purge_dead(settings, connection, args):
    import amqp

    from celeryd_pkg.poison import DEAD_QUEUE

    channel = connection.channel()
    try:
        count = channel.queue_purge(DEAD_QUEUE) or 0
    except amqp.exceptions.NotFound:
        count = 0
    finally:
        if channel.is_open:
            channel.close()
    print(f"removed {count} dead task{'' if count == 1 else 's'} from {DEAD_QUEUE}")
    return 0


ACTIONS = {"list": list_dead, "requeue": requeue_dead, "purge": purge_dead}


def action_dead(args):
    from celeryd_pkg import broker

    settings = config_module.load(args.config)
    connection = broker.connect(settings)
    try:
        return ACTIONS[args.action](settings, connection, args)
    except CelerydError:
        raise
    except Exception as error:  # noqa: BLE001 - translated, never a traceback
        raise broker.translate(error, settings) from None
    finally:
        broker.close(connection)


def _arguments(parser):
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", help="one line per dead task: id, task, origin queue, deliveries, when, why",
        description="List the tasks in celeryd.dead without removing them.")
    listing.add_argument("--json", action="store_true",
                         help="print one JSON array of objects instead")
    requeue = actions.add_parser(
        "requeue", help="send one dead task back to its queue with a fresh count",
        description="Send the dead task ID back to the queue it came from, then remove it "
                    "from celeryd.dead.")
    requeue.add_argument("id", metavar="ID", help="the task id, as dead list prints it")
    purge = actions.add_parser("purge", help="remove every dead task for good (needs --yes)",
                               description="Remove every task from celeryd.dead.")
    purge.add_argument("--yes", action="store_true", help="confirm: the tasks are lost")
    for sub in (listing, requeue, purge):
        config_option(sub)


def _validate(args):
    if args.action == "purge" and not args.yes:
        raise UsageError("celeryd-admin: dead purge removes every dead task for good: "
                         "add --yes to confirm")


COMMANDS = (
    Command("dead", "list, requeue or purge the tasks whose worker process died on every "
                    "delivery (the queue celeryd.dead)", action_dead, _arguments, _validate),
)
