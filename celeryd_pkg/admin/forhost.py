"""provision --for-host NAME: the broker account of another host (a worker, a client, or a
broker joining the cluster), printed once as its join string."""

import json
import socket
import sys
from pathlib import Path

from celeryd_pkg import account, config, files
from celeryd_pkg.admin import cluster, storeaccounts, tls
from celeryd_pkg.admin.provision import operator_account, provision_remote
from celeryd_pkg.admin.rabbitmqctl import Rabbitmqctl, check_name

__all__ = ["HOSTS_FILE", "provision_for_host", "remember_hosts"]

HOSTS_FILE = "10-broker-hosts.yaml"


def provision_for_host(args):
    """Make the account of another host and print its join string (the only place its
    password is ever shown: pipe it straight into `celeryd-admin join -` over ssh)."""
    vhost = check_name("vhost", args.vhost or operator_account(args.config)[1])
    user = check_name("user", args.user or f"{args.role}-{args.for_host}")
    ca = tls.ca_files(config.config_paths(args.config)[0].parent)
    tls_on = ca.exists()
    if not tls_on:
        print("celeryd-admin: warning: no TLS on this broker yet (celeryd-admin tls-setup): "
              "this join string is plain amqp://, the password will cross the network "
              "unencrypted", file=sys.stderr)
    ctl = Rabbitmqctl()
    # What a broker joining the cluster needs, read before anything changes.
    joining = cluster.bundle(ctl) if args.role == "broker" else None
    # The store first: when redis-server is down, nothing has changed yet.
    results_password = (storeaccounts.add_if_here(args.config, user, args.role)
                        if args.role != "broker" else None)  # a broker needs no store
    password = provision_remote(ctl, user, vhost, args.role)
    if joining:  # queues declared without a type are quorum queues, replicated
        ctl.run("update_vhost_metadata", vhost, "--default-queue-type", "quorum")
    hosts = args.broker_host or config.load(args.config).broker.hosts or [socket.getfqdn()]
    if joining and len(hosts) > 1:  # later join strings (workers, clients) name every node
        remember_hosts(config.config_paths(args.config)[1], hosts)
    broker = {"host": hosts[0], "hosts": hosts if len(hosts) > 1 else [], "vhost": vhost,
              "user": user, "password": password, "tls": tls_on}
    print(account.to_url(broker, masked=False, ca_file=ca.cert if tls_on else None,
                         results_password=results_password, cluster=joining), flush=True)
    return 0


def remember_hosts(conf_d, hosts):
    """Write the cluster's nodes to conf.d/HOSTS_FILE (broker.hosts), once they are known."""
    text = ("# Written by celeryd-admin provision --role broker: the nodes of this cluster.\n"
            "broker:\n  hosts: [" + ", ".join(json.dumps(host) for host in hosts) + "]\n")
    files.replace(Path(conf_d) / HOSTS_FILE, text)
