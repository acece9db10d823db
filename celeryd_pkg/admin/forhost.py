"""provision --for-host NAME: the broker account of another host (a worker, a client, or a
broker joining the cluster), printed once as its join string."""

import socket
import sys

from celeryd_pkg import account, config
from celeryd_pkg.admin import cluster, storeaccounts, tls
from celeryd_pkg.admin.provision import operator_account, provision_remote
from celeryd_pkg.admin.rabbitmqctl import Rabbitmqctl, check_name

__all__ = ["provision_for_host"]


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
    broker = {"host": hosts[0], "hosts": hosts if len(hosts) > 1 else [], "vhost": vhost,
              "user": user, "password": password, "tls": tls_on}
    print(account.to_url(broker, masked=False, ca_file=ca.cert if tls_on else None,
                         results_password=results_password, cluster=joining), flush=True)
    return 0
