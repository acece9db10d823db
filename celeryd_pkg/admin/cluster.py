"""Broker hosts in one RabbitMQ cluster: what a new node takes from a member (the Erlang
cookie, the member's node name and the TLS certificate that names every broker host), carried
in the join string of `provision --for-host NAME --role broker`; joining; the members' health.

The cookie lets its holder run any code on every node: it travels only inside the join
string (a secret like the password), is written root-to-rabbitmq 0400, and never reaches
argv, the environment or a log. Accounts, vhosts and permissions are cluster-wide by
themselves: the new node's own are reset by RabbitMQ's join_cluster.
"""

import grp
import pwd
from pathlib import Path

from celeryd_pkg import files
from celeryd_pkg.admin import systemctl, tls
from celeryd_pkg.errors import BrokerUnreachable, CelerydError

__all__ = ["COOKIE", "RABBITMQ_DIR", "node_name", "bundle", "status", "health", "join"]

COOKIE = "/var/lib/rabbitmq/.erlang.cookie"
RABBITMQ_DIR = "/etc/rabbitmq"
PROG = "celeryd-admin join"


def node_name(ctl):
    """Return the local RabbitMQ node's name, e.g. rabbit@broker-a."""
    return ctl.run("eval", "node().").stdout.strip().strip("'")


def bundle(ctl):
    """On a node of the cluster, return what a new node needs: {node, cookie} and, when
    tls-setup ran here, the broker certificate and key {cert, key} (PEM text)."""
    made = {"node": node_name(ctl), "cookie": _read_cookie(COOKIE, must=True)}
    server = tls.server_files(RABBITMQ_DIR)
    if server:
        made["cert"], made["key"] = (part.decode() for part in server)
    return made


def status(ctl):
    """Return the local node's view of its cluster: {running, disk, partitions, alarms}, the
    node names sorted (partitions and alarms as RabbitMQ reports them, empty when healthy)."""
    reported = ctl._json("cluster_status")
    return {"running": sorted(reported.get("running_nodes") or []),
            "disk": sorted(reported.get("disk_nodes") or []),
            "partitions": reported.get("partitions") or {},
            "alarms": reported.get("alarms") or []}


def health(count, unreachable, ctl=None):
    """Return check's (status, detail, hint) of a cluster of count nodes: the local node's
    view (members running, partitions, alarms) on a broker host, else which of the nodes
    this host reaches (unreachable: the nodes it could not connect to)."""
    from celeryd_pkg.admin.rabbitmqctl import Rabbitmqctl

    try:
        seen = status(ctl or Rabbitmqctl(timeout=30))
    except CelerydError:  # no broker on this host (or not root): what the tcp step saw
        seen = None
    hint = "systemctl status rabbitmq-server on the node; the others serve meanwhile"
    if seen is None:
        detail = f"{count - len(unreachable)} of {count} nodes answer"
        return ("WARN", detail, hint) if unreachable else ("OK", detail, "")
    stopped = sorted(set(seen["disk"]) - set(seen["running"]))
    detail = (f"{len(seen['running'])} of {len(seen['disk'])} nodes running: "
              f"{', '.join(seen['running'])}"
              + (f"; stopped: {', '.join(stopped)}" if stopped else "")
              + (f"; partitions: {seen['partitions']}" if seen["partitions"] else "")
              + (f"; alarms: {seen['alarms']}" if seen["alarms"] else ""))
    if stopped or seen["partitions"] or seen["alarms"]:
        return "WARN", detail, hint
    return "OK", detail, ""


def join(ctl, joined, ca_pem=None):
    """Make the local rabbitmq-server a node of the cluster of joined (a bundle): stop the
    broker, install the cluster's certificate and cookie, start it, and join_cluster. Return
    the changes made ([] when this node is a member already). Raise NodeDown when the local
    broker does not run, CelerydError when RabbitMQ refuses the join."""
    if joined["node"] in status(ctl)["disk"]:
        return []
    try:
        uid, gid = pwd.getpwnam("rabbitmq").pw_uid, grp.getgrnam("rabbitmq").gr_gid
    except KeyError:
        raise CelerydError("celeryd-admin join: no user rabbitmq: install rabbitmq-server "
                           "here first (apt install rabbitmq-server)") from None
    # The cookie and the TLS listener are read when the broker starts; a cookie changed under
    # a running broker would also lock out the rabbitmqctl that stops it.
    active = systemctl.is_active("rabbitmq-server")
    if active and not systemctl.stop("rabbitmq-server"):
        raise BrokerUnreachable(f"{PROG}: rabbitmq-server did not stop: journalctl -u "
                                f"rabbitmq-server")
    if joined.get("cert") and ca_pem:
        tls.install_server(RABBITMQ_DIR, ca_pem.encode(), joined["cert"].encode(),
                           joined["key"].encode(), gid, prog=PROG)
    if _read_cookie(COOKIE) != joined["cookie"]:
        files.replace(COOKIE, joined["cookie"], PROG, 0o400, gid, uid)
    if active and not systemctl.start("rabbitmq-server"):
        raise BrokerUnreachable(f"{PROG}: rabbitmq-server did not start with the cluster's "
                                f"cookie and certificate: journalctl -u rabbitmq-server")
    ctl.run("stop_app")
    try:
        ctl.run("join_cluster", joined["node"])
    finally:
        ctl.run("start_app")
    return [f"joined the cluster of {joined['node']}"]


def _read_cookie(path, must=False):
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        if not must:
            return None
        raise CelerydError(f"celeryd-admin: no {path}: run this on a broker host whose "
                           f"rabbitmq-server has started once") from None
    except OSError as error:
        raise CelerydError(f"celeryd-admin: cannot read {path} ({error.strerror}); run as "
                           f"root") from None
