"""Result-store accounts of other hosts, made where store-setup ran (the broker host, usually):
`provision --for-host` adds one with the host's role and puts its password in the join string,
`deprovision --user` removes it. Each change goes to the ACL file first, then into the running
redis-server with ACL LOAD as the admin, and the new login is proven before it is handed out.
"""

import sys

from celeryd_pkg import files
from celeryd_pkg.admin import store, storesetup
from celeryd_pkg.errors import CelerydError

__all__ = ["JOINED_CONF_TEXT", "here", "add", "remove", "add_if_here", "remove_if_here",
           "store_results_here"]


JOINED_CONF_TEXT = ("# Written by celeryd-admin join: this host stores and reads results in the\n"
                    "# result store on the broker host (its login is in the credentials file).\n"
                    "results:\n  backend: redis\n")


def here(layout, server):
    """Whether this host's redis-server is the result store (store-setup ran here)."""
    return (server.installed() and layout.aclfile.exists()
            and store.read_admin_password(layout.admin_password) is not None)


def add(layout, server, user, role):
    """Give user a fresh store password with role's rules, live; return the password. A
    second call issues a new one (the broker host keeps no copy, as for the broker)."""
    from celeryd_pkg.admin.provision import new_password

    password = new_password()
    _change(layout, server, user, password, role)
    server.login(user, password).close()  # proves the login the join string will carry
    return password


def remove(layout, server, user):
    """Remove user's store account, live. Return True if there was one."""
    accounts, _, _ = store.parse_aclfile(layout.aclfile.read_text(), layout.aclfile)
    if user not in accounts:
        return False
    _change(layout, server, user, None, "worker")
    return True


def add_if_here(config_file, user, role):
    """provision --for-host: the new password of user's store account, or None when the store
    is not on this host."""
    layout, server = store.Layout(config_file), storesetup.RedisServer()
    return add(layout, server, user, role) if here(layout, server) else None


def remove_if_here(config_file, user):
    """deprovision: remove user's store account when the store is here. A store that is down
    only prints a warning; the broker account goes all the same."""
    layout, server = store.Layout(config_file), storesetup.RedisServer()
    if not here(layout, server):
        return
    try:
        remove(layout, server, user)
    except CelerydError as error:
        print(f"celeryd-admin: warning: the result store account of '{user}' stays: "
              f"{error.message}", file=sys.stderr)


def _change(layout, server, user, password, role):
    admin = store.read_admin_password(layout.admin_password)
    old = layout.aclfile.read_text()
    text = store.update_aclfile(old, admin, user, password, role, server.version(),
                                layout.aclfile)
    client = server.login(store.ADMIN, admin)  # before the file changes: redis-server runs
    try:
        store.write_aclfile(text, layout.aclfile, layout.redis_group)
        try:
            client.acl_load()
        except Exception as error:  # noqa: BLE001 - one line; the old file goes back
            store.write_aclfile(old, layout.aclfile, layout.redis_group)
            raise storesetup.translate(error, store.ADMIN) from None
    finally:
        client.close()


def store_results_here(conf_d_file):
    """On a joined host: results.backend: redis in conf_d_file, unless a file there already
    sets it (store-setup's, or the operator's with results.expires). Return whether it wrote."""
    if storesetup.sets_redis(conf_d_file):
        return False
    files.replace(conf_d_file, JOINED_CONF_TEXT, "celeryd-admin join", mode=0o644)
    return True
