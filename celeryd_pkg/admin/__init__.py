"""celeryd-admin: a package of commands (cli assembles them; one module per command)."""

from celeryd_pkg.admin.cli import main

__all__ = ["main"]
