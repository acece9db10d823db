"""`python3 -m celeryd_pkg.admin`: the same entry point as /usr/sbin/celeryd-admin."""

import sys

from celeryd_pkg.admin.cli import main

sys.exit(main())
