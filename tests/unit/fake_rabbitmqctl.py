"""A stand-in rabbitmqctl for unit tests of argument handling (the real one runs in
tests/integration and tests/system): logs argv, stdin and environment, keeps state in JSON."""

import grp
import json
import textwrap
from pathlib import Path

from celeryd_pkg.admin import rabbitmqctl

FAKE_RABBITMQCTL = textwrap.dedent('''\
    #!/usr/bin/python3
    """A stand-in for rabbitmqctl: logs argv, stdin and environment; keeps state in JSON."""
    import json, os, sys

    stdin = sys.stdin.read()
    with open(os.environ["FAKE_CTL_LOG"], "a") as log:
        log.write(json.dumps({"argv": sys.argv, "stdin": stdin, "env": dict(os.environ)}) + "\\n")
    if os.environ.get("FAKE_CTL_DOWN"):
        sys.stderr.write("Error: unable to perform an operation on node 'rabbit@fake'. Please "
                         "see diagnostics information and suggestions below.\\n")
        sys.exit(69)
    path = os.environ["FAKE_CTL_STATE"]
    state = (json.load(open(path)) if os.path.exists(path)
             else {"users": {}, "vhosts": ["/"], "perms": {}})
    args = [a for a in sys.argv[1:] if a != "-q"]
    if "--formatter" in args:
        del args[args.index("--formatter"):args.index("--formatter") + 2]
    cmd, rest = args[0], args[1:]
    password = stdin.split("\\n")[0]

    def fail(code, message):
        sys.stderr.write("Error:\\n" + message + "\\n")
        sys.exit(code)

    if cmd == os.environ.get("FAKE_CTL_FAIL"):
        # A misbehaving tool that echoes its input: the caller must mask it.
        fail(70, "something broke while handling " + (password or "nothing"))
    if cmd in ("add_user", "change_password", "authenticate_user") and len(rest) != 1:
        fail(64, "the fake accepts no password argument")
    users, perms = state["users"], state["perms"]
    if cmd == "list_vhosts":
        print(json.dumps([{"name": v} for v in state["vhosts"]]))
    elif cmd == "list_users":
        print(json.dumps([{"user": u, "tags": []} for u in users]))
    elif cmd == "list_user_permissions":
        if rest[0] not in users:
            fail(69, '{:no_such_user, "%s"}' % rest[0])
        print(json.dumps([{"vhost": k.split("\\t")[0], "configure": c, "write": w, "read": r}
                          for k, (c, w, r) in perms.items() if k.split("\\t")[1] == rest[0]]))
    elif cmd == "add_vhost":
        state["vhosts"] = sorted(set(state["vhosts"]) | {rest[0]})
    elif cmd == "delete_vhost":
        if rest[0] not in state["vhosts"]:
            fail(65, "Virtual host '%s' does not exist" % rest[0])
        state["vhosts"].remove(rest[0])
    elif cmd == "add_user":
        if rest[0] in users:
            fail(70, 'User "%s" already exists' % rest[0])
        if not password:
            fail(65, "Password is not provided via argument or stdin")
        users[rest[0]] = password
    elif cmd == "change_password":
        if rest[0] not in users:
            fail(67, 'User "%s" does not exist' % rest[0])
        users[rest[0]] = password
    elif cmd == "authenticate_user":
        if users.get(rest[0]) != password:
            fail(65, 'Error: failed to authenticate user "%s"' % rest[0])
        print("Success")
    elif cmd == "delete_user":
        if rest[0] not in users:
            fail(67, 'User "%s" does not exist' % rest[0])
        del users[rest[0]]
        for key in [k for k in perms if k.endswith("\\t" + rest[0])]:
            del perms[key]
    elif cmd == "eval":
        print("'%s'" % state.get("node", "rabbit@fake"))
    elif cmd == "cluster_status":
        nodes = state.get("cluster", [state.get("node", "rabbit@fake")])
        print(json.dumps({"running_nodes": nodes, "disk_nodes": nodes, "partitions": {},
                          "alarms": []}))
    elif cmd in ("stop_app", "start_app"):
        pass
    elif cmd == "join_cluster":
        state["cluster"] = sorted(set(state.get("cluster", [state.get("node", "rabbit@fake")]))
                                  | {rest[0]})
    elif cmd == "update_vhost_metadata":
        assert rest[1:] == ["--default-queue-type", "quorum"], rest
        state.setdefault("queue_type", {})[rest[0]] = rest[2]
    elif cmd == "set_permissions":
        assert rest[0] == "-p" and len(rest) == 6, rest
        perms[rest[1] + "\\t" + rest[2]] = rest[3:]
    else:
        fail(64, "unknown command " + cmd)
    json.dump(state, open(path, "w"))
''')
WRITES = {"add_vhost", "delete_vhost", "add_user", "change_password", "delete_user",
          "set_permissions", "join_cluster", "update_vhost_metadata"}



class FakeCtl:
    """The fake rabbitmqctl in a directory: its path, environment, state and call log."""

    def __init__(self, directory):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "rabbitmqctl"
        self.path.write_text(FAKE_RABBITMQCTL)
        self.path.chmod(0o755)
        self.log = self.dir / "calls.jsonl"
        self.state_path = self.dir / "state.json"
        self.env = {"FAKE_CTL_LOG": str(self.log), "FAKE_CTL_STATE": str(self.state_path),
                    "CELERYD_RABBITMQCTL": str(self.path), "PATH": "/usr/bin:/bin"}

    def ctl(self, **extra):
        return rabbitmqctl.Rabbitmqctl(env={**self.env, **extra})

    def calls(self):
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def commands(self):
        return [[a for a in c["argv"][1:] if a != "-q"][0] for c in self.calls()]

    def state(self):
        return json.loads(self.state_path.read_text())

    def reset_log(self):
        self.log.unlink(missing_ok=True)


def other_group():
    """An existing group other than root, so group ownership is really tested."""
    for name in ("daemon", "bin", "sys", "adm", "nogroup"):
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            continue
    raise AssertionError("no usable system group on this host")


def assert_secret_only_on_stdin(fake, password):
    for call in fake.calls():
        assert all(password not in arg for arg in call["argv"])
        assert all(password not in value for value in call["env"].values())
