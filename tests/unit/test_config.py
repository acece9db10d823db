"""The config loader: precedence, strict validation, and errors that name file, key and line."""

import grp
from pathlib import Path

import pytest

from celeryd_pkg import config as module
from celeryd_pkg.errors import ConfigError
from celeryd_pkg.schema import SCHEMA

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def etc(tmp_path):
    directory = tmp_path / "etc" / "celeryd"
    (directory / "conf.d").mkdir(parents=True)
    (directory / "celeryd.yaml").write_text("")
    return directory


def write(path, text):
    path.write_text(text)
    return path


def load(etc, env=None, **kwargs):
    return module.load(str(etc / "celeryd.yaml"), env=env or {}, **kwargs)


def error_of(etc, env=None, **kwargs):
    with pytest.raises(ConfigError) as info:
        load(etc, env, **kwargs)
    assert info.value.exit_code == 3
    return info.value.message


def test_shipped_config_file_sets_every_key_to_its_default(tmp_path):
    shipped = module.load(str(REPO / "conf" / "celeryd.yaml"), env={})
    built_in = module.load(env={"CELERYD_ROOT": str(tmp_path)})  # no file there
    assert built_in.sources == ()
    for section, keys in SCHEMA.items():
        for name in keys:
            assert (getattr(getattr(shipped, section), name)
                    == getattr(getattr(built_in, section), name))
    text = (REPO / "conf" / "celeryd.yaml").read_text()
    for section, keys in SCHEMA.items():
        for name in keys:
            assert f"{name}:" in text, f"conf/celeryd.yaml does not document {section}.{name}"


def test_missing_default_config_file_gives_built_in_defaults(tmp_path):
    loaded = module.load(env={"CELERYD_ROOT": str(tmp_path)})
    assert loaded.broker.host == "localhost"
    assert loaded.worker.queues == ["celery"]
    assert loaded.sources == ()


def test_root_override_reads_etc_celeryd_under_it(tmp_path, etc):
    write(etc / "celeryd.yaml", "worker:\n  concurrency: 5\n")
    loaded = module.load(env={"CELERYD_ROOT": str(tmp_path)})
    assert loaded.worker.concurrency == 5


def test_missing_explicit_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such file"):
        module.load(str(tmp_path / "nope.yaml"), env={})


def test_conf_d_overrides_main_file_in_lexical_order(etc):
    write(etc / "celeryd.yaml", "worker:\n  concurrency: 3\n  loglevel: debug\n")
    write(etc / "conf.d" / "20-b.yaml", "worker:\n  concurrency: 7\n")
    write(etc / "conf.d" / "10-a.yaml", "worker:\n  concurrency: 5\n")
    write(etc / "conf.d" / "ignored.yml.disabled", "worker:\n  concurrency: 99\n")
    loaded = load(etc)
    assert loaded.worker.concurrency == 7
    assert loaded.worker.loglevel == "debug"
    assert [Path(p).name for p in loaded.sources] == ["celeryd.yaml", "10-a.yaml", "20-b.yaml"]


def test_instance_overlay_is_read_only_by_its_instance(etc):
    write(etc / "celeryd.yaml", "worker:\n  queues: [celery]\n")
    write(etc / "conf.d" / "@fast.yaml", "worker:\n  queues: [fast]\n")
    assert load(etc).worker.queues == ["celery"]
    assert load(etc, instance="fast").worker.queues == ["fast"]
    assert load(etc, instance="other").worker.queues == ["celery"]


def test_credentials_override_conf_d(etc):
    write(etc / "conf.d" / "10.yaml", "broker:\n  user: fromconfd\n")
    write(etc / "credentials", "broker:\n  user: fromcreds\n  password: pw\n")
    loaded = load(etc)
    assert (loaded.broker.user, loaded.broker.password) == ("fromcreds", "pw")


def test_environment_overrides_credentials(etc):
    write(etc / "credentials", "broker:\n  host: credhost\n")
    loaded = load(etc, env={"CELERYD_BROKER_HOST": "envhost", "CELERYD_WORKER_QUEUES": "a, b",
                            "CELERYD_WORKER_PREFETCH_MULTIPLIER": "4"})
    assert loaded.broker.host == "envhost"
    assert loaded.worker.queues == ["a", "b"]
    assert loaded.worker.prefetch_multiplier == 4


def test_flags_override_environment(etc):
    loaded = load(etc, env={"CELERYD_WORKER_CONCURRENCY": "4"},
                  overrides={("worker", "concurrency"): 9, ("worker", "loglevel"): None})
    assert loaded.worker.concurrency == 9
    assert loaded.worker.loglevel == "info"


def test_environment_variables_of_other_tools_are_ignored(etc):
    # The old celeryd init script used CELERYD_OPTS and CELERYD_NODES.
    loaded = load(etc, env={"CELERYD_OPTS": "--time-limit=300", "CELERYD_NODES": "w1"})
    assert loaded.worker.concurrency == 2


def test_unknown_environment_key_in_a_known_section_is_an_error(etc):
    message = error_of(etc, env={"CELERYD_WORKER_CONCURENCY": "4"})
    assert message == "celeryd: environment CELERYD_WORKER_CONCURENCY: unknown key 'worker.concurency'"


def test_bad_environment_value_names_the_variable_and_expected_type(etc):
    message = error_of(etc, env={"CELERYD_BROKER_PORT": "abc"})
    assert message == ("celeryd: environment CELERYD_BROKER_PORT: broker.port: expected an "
                       "integer, got a string 'abc'")


def test_unknown_key_names_file_line_and_key(etc):
    path = write(etc / "celeryd.yaml", "broker:\n  host: x\n  hots: y\n")
    assert error_of(etc) == f"celeryd: {path}: line 3: unknown key 'broker.hots'"


def test_unknown_section_names_file_and_line(etc):
    path = write(etc / "celeryd.yaml", "\nbrokers:\n  host: x\n")
    message = error_of(etc)
    assert message.startswith(f"celeryd: {path}: line 2: unknown section 'brokers'")


def test_wrong_type_names_file_line_key_and_expected_type(etc):
    path = write(etc / "celeryd.yaml", "worker:\n  concurrency: two\n")
    assert error_of(etc) == (f"celeryd: {path}: line 2: worker.concurrency: expected an "
                             f"integer, got a string 'two'")


def test_boolean_is_not_an_integer(etc):
    write(etc / "celeryd.yaml", "broker:\n  port: true\n")
    assert "broker.port: expected an integer, got a boolean True" in error_of(etc)


def test_list_of_strings_is_checked_item_by_item(etc):
    write(etc / "celeryd.yaml", "worker:\n  queues: [a, 3]\n")
    assert "worker.queues: expected a list of strings" in error_of(etc)


def test_values_below_minimum_are_rejected(etc):
    write(etc / "celeryd.yaml", "worker:\n  concurrency: 0\n")
    assert "worker.concurrency: must be at least 1, got 0" in error_of(etc)


def test_every_problem_in_a_file_is_reported_one_line_each(etc):
    write(etc / "celeryd.yaml", "worker:\n  concurrency: x\n  bogus: 1\n")
    lines = error_of(etc).splitlines()
    assert len(lines) == 2
    assert "line 2: worker.concurrency" in lines[0] and "line 3: unknown key 'worker.bogus'" in lines[1]


def test_yaml_syntax_error_names_file_and_line(etc):
    path = write(etc / "celeryd.yaml", "broker:\n  host: [unclosed\n  port: 1\n")
    message = error_of(etc)
    assert message.startswith(f"celeryd: {path}: line ")
    assert "YAML syntax error" in message and "\n" not in message


def test_top_level_must_be_a_mapping(etc):
    write(etc / "celeryd.yaml", "- a\n- b\n")
    assert "expected a mapping of sections" in error_of(etc)


def test_empty_file_and_empty_section_are_fine(etc):
    write(etc / "celeryd.yaml", "# nothing\n")
    write(etc / "conf.d" / "10.yaml", "worker:\n")
    assert load(etc).worker.concurrency == 2


def test_credentials_file_may_only_set_broker_login_keys(etc):
    path = write(etc / "credentials", "worker:\n  concurrency: 9\n")
    assert error_of(etc) == (f"celeryd: {path}: line 1: unknown section 'worker' "
                             f"(expected one of broker, results)")
    write(etc / "credentials", "broker:\n  heartbeat: 9\n")
    assert "unknown key 'broker.heartbeat' (not allowed in this file)" in error_of(etc)
    write(etc / "credentials", "results:\n  host: elsewhere\n")
    assert "unknown key 'results.host' (not allowed in this file)" in error_of(etc)


def test_credentials_file_carries_the_result_stores_login(etc):
    path = write(etc / "credentials", "broker:\n  password: pw\nresults:\n  user: worker-web1\n"
                                      "  password: 's3cr@t/'\n")
    loaded = load(etc)
    assert (loaded.results.user, loaded.results.password) == ("worker-web1", "s3cr@t/")
    assert module.read_credentials(path, "results") == {"user": "worker-web1",
                                                        "password": "s3cr@t/"}
    assert "s3cr@t" not in repr(loaded.results)


def test_the_result_store_follows_the_broker_unless_told(etc):
    loaded = load(etc)
    assert (loaded.results.backend, loaded.results.host, loaded.results.port,
            loaded.results.tls, loaded.results.db) == ("rpc", "localhost", 6379, False, 0)
    write(etc / "celeryd.yaml", "broker:\n  host: mq.example.org\n  tls: true\n")
    loaded = load(etc)
    assert (loaded.results.host, loaded.results.port, loaded.results.tls) == (
        "mq.example.org", 6380, True)
    write(etc / "celeryd.yaml", "broker:\n  tls: true\nresults:\n  host: store\n  tls: false\n")
    loaded = load(etc, env={"CELERYD_RESULTS_PORT": "7000", "CELERYD_RESULTS_DB": "2"})
    assert (loaded.results.host, loaded.results.port, loaded.results.tls, loaded.results.db) == (
        "store", 7000, False, 2)


def test_results_backend_is_rpc_or_redis_named_in_the_error(etc):
    path = write(etc / "celeryd.yaml", "results:\n  backend: memcached\n")
    assert error_of(etc) == (f"celeryd: {path}: line 2: results.backend: 'memcached' is not one "
                             f"of rpc, redis")
    write(etc / "celeryd.yaml", "")
    assert load(etc, env={"CELERYD_RESULTS_BACKEND": "redis"}).results.backend == "redis"


def test_results_url_masks_the_password_unless_asked(etc):
    write(etc / "celeryd.yaml", "results:\n  backend: redis\n  host: '::1'\n  db: 3\n")
    write(etc / "credentials", "results:\n  user: u@x\n  password: 'p@ss/word'\n")
    loaded = load(etc)
    assert loaded.results_url() == "redis://u%40x:***@[::1]:6379/3"
    assert loaded.results_url(masked=False) == "redis://u%40x:p%40ss%2Fword@[::1]:6379/3"


def test_directory_instead_of_file_is_a_clear_error(etc):
    (etc / "credentials").mkdir()
    assert error_of(etc).endswith("credentials: is a directory, expected a YAML file")


def test_non_utf8_file_is_a_clear_error(etc):
    (etc / "celeryd.yaml").write_bytes(b"broker:\n  host: \xff\n")
    assert "not UTF-8 text" in error_of(etc)


def test_unreadable_credentials_message_names_the_files_group(etc):
    # The real permission failure, as an unprivileged user, is in the integration tests.
    path = write(etc / "credentials", "broker:\n  password: pw\n")
    group = grp.getgrgid(path.stat().st_gid).gr_name
    message = module.permission_message(path)
    assert message.startswith(f"celeryd: {path}: permission denied; it is readable by group '{group}'")
    assert f"adduser $USER {group}" in message


def test_broker_url_masks_the_password_unless_asked(etc):
    write(etc / "credentials", "broker:\n  password: 'p@ss/word'\n  vhost: v/1\n")
    loaded = load(etc)
    assert loaded.broker_url() == "amqp://celery:***@localhost:5672/v%2F1"
    assert loaded.broker_url(masked=False) == "amqp://celery:p%40ss%2Fword@localhost:5672/v%2F1"


def test_config_and_its_sections_refuse_assignment_as_read_only(etc):
    loaded = load(etc)
    with pytest.raises(AttributeError, match=r"^the configuration is read-only$"):
        loaded.worker.concurrency = 3
    with pytest.raises(AttributeError, match=r"^the configuration is read-only$"):
        loaded.worker = None
    with pytest.raises(AttributeError, match=r"^the configuration is read-only$"):
        del loaded.worker
    with pytest.raises(AttributeError, match=r"^the configuration is read-only$"):
        del loaded.worker.concurrency
    assert loaded.worker.concurrency == SCHEMA["worker"]["concurrency"].default


def test_a_mistyped_password_is_never_repeated_in_the_error(etc):
    path = write(etc / "credentials", "broker:\n  password: 123456\n")
    assert error_of(etc) == (f"celeryd: {path}: line 2: broker.password: expected a string, "
                             f"got an integer")


# --- TLS and plain AMQP across hosts ---------------------------------------------------------

def test_port_follows_tls_unless_set(etc, tmp_path):
    write(etc / "celeryd.yaml", "broker:\n  tls: true\n")
    assert load(etc).broker.port == 5671
    assert load(etc, {"CELERYD_BROKER_TLS": "false"}).broker.port == 5672
    assert load(etc, {"CELERYD_BROKER_PORT": "6000"}).broker.port == 6000
    assert load(etc).broker_url() == "amqps://celery@localhost:5671/celery"


@pytest.mark.parametrize("text, expected", [
    ("yes", True), ("true", True), ("1", True), ("off", False), ("False", False)])
def test_booleans_from_the_environment(etc, text, expected):
    write(etc / "celeryd.yaml", "")
    assert load(etc, {"CELERYD_BROKER_VERIFY": text}).broker.verify is expected


@pytest.mark.parametrize("yaml_text, message", [
    ("broker:\n  tls: 1\n", "broker.tls: expected true or false, got an integer 1"),
    ("broker:\n  verify: 'no'\n", "broker.verify: expected true or false, got a string 'no'"),
    ("broker:\n  tls: true\n  ca_file: /nonexistent/ca.pem\n",
     "broker.ca_file: /nonexistent/ca.pem: no such file"),
    ("broker:\n  tls: true\n  cert_file: /etc/hostname\n",
     "broker.cert_file and broker.key_file: set both or neither"),
])
def test_tls_settings_are_checked(etc, yaml_text, message):
    write(etc / "celeryd.yaml", yaml_text)
    assert message in error_of(etc)


@pytest.mark.parametrize("broker_yaml, warns", [
    ("host: localhost", False), ("host: 127.0.0.1", False), ("host: ::1", False),
    ("host: 10.0.0.1", True), ("host: broker.example.org", True),
    ("host: 10.0.0.1\n  tls: true", False), ("host: 10.0.0.1\n  allow_plain: true", False),
])
def test_plain_amqp_to_another_host_warns_unless_allowed(etc, broker_yaml, warns):
    write(etc / "celeryd.yaml", f"broker:\n  {broker_yaml}\n")
    warning = load(etc).plain_remote_warning()
    assert (warning is not None) is warns
    if warns:
        assert warning.startswith("celeryd: warning: broker ") and "\n" not in warning
