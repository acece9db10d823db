"""broker.hosts against a real RabbitMQ: celery-submit and celeryd-admin check pass over a
node out of reach to the next; on this Debian 12 host (Celery 5.2, kombu 5.2) a worker
refuses a cluster, and so does a countdown that needs native delayed delivery, with exit 3.

The cluster itself (three nodes, quorum queues, nodes stopped and killed) is
tests/system/test_cluster.py's, on Debian 13."""

import celery
import pytest

from tests.integration.broker import free_port
from tests.integration.conftest import PYTHON, clean_env, run_module, submit, write_config

pytestmark = pytest.mark.skipif(
    celery.VERSION >= (5, 5), reason="the refusals tested are Celery 5.2's; Debian 13's "
    "cluster is tests/system/test_cluster.py's")


@pytest.fixture
def first_node_down(tmp_path, rabbitmq, account):
    """A config whose first node has nothing listening and whose second is the broker."""
    return write_config(tmp_path / "etc", rabbitmq, account, extra=(
        f"  hosts: ['127.0.0.1:{free_port()}', '127.0.0.1:{rabbitmq.port}']\n"))


def test_celery_submit_passes_over_a_node_that_is_down(first_node_down, shared_worker):
    result = submit(first_node_down, "add", "20", "22")
    assert (result.returncode, result.stdout, result.stderr) == (0, "42\n", "")


def test_admin_check_passes_over_a_node_that_is_down(first_node_down, shared_worker):
    result = run_module("celeryd_pkg.admin", "check", "--config", str(first_node_down))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_a_countdown_on_a_cluster_needs_delayed_delivery_exit_3(first_node_down,
                                                               shared_worker):
    result = submit(first_node_down, "add", "1", "1", "--countdown", "5")
    assert result.returncode == 3 and result.stdout == ""
    assert result.stderr == ("celery-submit: --countdown on a cluster (broker.hosts) needs "
                             "kombu 5.4's native delayed delivery, which this host lacks "
                             "(Debian 13 has it)\n")


def test_the_worker_refuses_a_cluster_under_celery_5_2_with_one_line_exit_3(first_node_down):
    import subprocess

    result = subprocess.run([PYTHON, "-m", "celeryd_pkg.worker", "--config",
                             str(first_node_down)], env=clean_env(), capture_output=True,
                            text=True, timeout=60, cwd="/")
    assert result.returncode == 3, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("celeryd: broker.hosts names a cluster of 2 nodes") \
        and "Celery 5.2" in line and "Traceback" not in result.stderr
