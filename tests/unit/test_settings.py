"""Celery's result backend settings from results.*: rpc as before, or the Redis store."""

import ssl

import pytest
from celery import Celery

from celeryd_pkg import config
from celeryd_pkg.settings import celery_settings, result_settings


@pytest.fixture
def load(tmp_path):
    """Return a function: given celeryd.yaml text (and the credentials'), the loaded Config."""
    def write(text, credentials="broker:\n  password: bp\nresults:\n  user: w\n  password: 'r/p'\n"):
        (tmp_path / "celeryd.yaml").write_text(text)
        (tmp_path / "credentials").write_text(credentials)
        (tmp_path / "ca.pem").write_text("not read here")
        return config.load(str(tmp_path / "celeryd.yaml"), env={})
    return write


def test_rpc_is_the_default_and_stores_nothing(load):
    settings = celery_settings(load(""))
    assert (settings["result_backend"], settings["result_persistent"]) == ("rpc://", True)
    assert "redis_backend_use_ssl" not in settings


def test_redis_stores_with_the_login_retries_a_restart_and_keeps_no_extras(load):
    settings = celery_settings(load("results:\n  backend: redis\n  expires: 60\n  db: 2\n"))
    assert settings["result_backend"] == (
        "celeryd_pkg.settings:RetryingRedisBackend+redis://w:r%2Fp@localhost:6379/2")
    assert settings["result_backend_always_retry"] is True
    assert settings["result_backend_transport_options"]["retry_policy"]["max_retries"] is None
    assert settings["result_extended"] is False
    assert settings["result_expires"] == 60
    assert "redis_backend_use_ssl" not in settings


def test_redis_over_tls_verifies_with_the_brokers_ca(load, tmp_path):
    conf = load(f"broker:\n  tls: true\n  ca_file: {tmp_path}/ca.pem\nresults:\n  backend: redis\n")
    settings = result_settings(conf)
    assert settings["result_backend"].endswith("+rediss://w:r%2Fp@localhost:6380/0")
    assert settings["redis_backend_use_ssl"] == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True,
        "ssl_ca_certs": f"{tmp_path}/ca.pem"}
    conf = load("broker:\n  tls: true\n  verify: false\nresults:\n  backend: redis\n")
    assert result_settings(conf)["redis_backend_use_ssl"] == {
        "ssl_cert_reqs": ssl.CERT_NONE, "ssl_check_hostname": False}


@pytest.mark.parametrize("yaml_text", [
    "results:\n  backend: redis\n",
    "broker:\n  tls: true\nresults:\n  backend: redis\n",
])
def test_celerys_redis_backend_takes_these_settings_as_they_are(load, yaml_text):
    """Celery checks the TLS options when it builds the backend (no connection yet)."""
    app = Celery(set_as_current=False)
    app.conf.update(celery_settings(load(yaml_text)))
    backend = app.backend
    assert type(backend).__name__ == "RetryingRedisBackend"
    assert (backend.connparams["username"], backend.connparams["password"]) == ("w", "r/p")
    assert backend.expires == 86400
    assert (backend.retry_policy["max_retries"], backend.retry_policy["interval_max"]) == (None, 5)


def test_the_worker_retries_a_store_that_is_down_but_not_a_refused_login(load):
    import redis.exceptions

    app = Celery(set_as_current=False)
    app.conf.update(celery_settings(load("results:\n  backend: redis\n")))
    backend = app.backend
    assert backend.always_retry is True
    assert backend.exception_safe_to_retry(redis.exceptions.ConnectionError("refused"))
    assert backend.exception_safe_to_retry(redis.exceptions.TimeoutError("slow"))
    assert not backend.exception_safe_to_retry(redis.exceptions.AuthenticationError("WRONGPASS"))
    assert not backend.exception_safe_to_retry(ValueError("not the store's"))
