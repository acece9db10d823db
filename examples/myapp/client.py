from celeryd_pkg.client import app
from myapp.tasks import add

# The application's own code: no broker URL or password here; celeryd_pkg.client reads
# /etc/celeryd (so its user must be root or in group celery). Run with myapp importable:
#     PYTHONPATH=/srv/myapp python3 /srv/myapp/client.py
print(add.delay(4, 4).get(timeout=10))
print(app.send_task("celeryd.add", (4, 4)).get(timeout=10))
