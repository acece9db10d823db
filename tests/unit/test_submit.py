"""celery-submit's argument handling and result output, without a broker."""

import pytest

from celeryd_pkg import submit as module
from celeryd_pkg.errors import UsageError


@pytest.mark.parametrize("text, value", [
    ("4", 4), ("2.5", 2.5), ('"x"', "x"), ("[1,2]", [1, 2]), ('{"a": 1}', {"a": 1}),
    ("true", True), ("null", None), ("hello", "hello"), ("", ""), ("[1,", "[1,"),
])
def test_arguments_are_json_literals_where_they_parse_else_strings(text, value):
    assert module.parse_value(text) == value


@pytest.mark.parametrize("name, resolved", [
    ("add", "celeryd.add"), ("xsum", "celeryd.xsum"), ("myapp.tasks.resize", "myapp.tasks.resize"),
])
def test_bare_task_names_resolve_to_the_built_in_namespace(name, resolved):
    assert module.task_name(name) == resolved


@pytest.mark.parametrize("name", ["", "a b", ".add", "add."])
def test_malformed_task_names_are_usage_errors(name):
    with pytest.raises(UsageError):
        module.task_name(name)


def test_parse_args_collects_args_kwargs_and_options():
    args = module.parse_args(["add", "4", "x", "--kwarg", "y=[1]", "--kwarg", "z=hi",
                              "--queue", "q1", "--countdown", "2", "--timeout", "1.5", "--json"])
    assert args.task == "celeryd.add"
    assert args.args == [4, "x"]
    assert args.kwargs == {"y": [1], "z": "hi"}
    assert (args.queue, args.countdown, args.timeout, args.json, args.no_wait) == ("q1", 2.0, 1.5, True, False)


@pytest.mark.parametrize("argv, fragment", [
    ([], "the following arguments are required: task"),
    (["add", "--timeout", "soon"], "argument --timeout: invalid float value: 'soon'"),
    (["add", "--kwarg", "novalue"], "--kwarg 'novalue': expected NAME=VALUE"),
    (["add", "--kwarg", "1x=2"], "--kwarg '1x=2': expected NAME=VALUE"),
    (["add", "--countdown", "-1"], "--countdown -1.0: expected seconds >= 0"),
    (["add", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_arguments_are_one_line_usage_errors(argv, fragment):
    with pytest.raises(UsageError) as info:
        module.parse_args(argv)
    assert fragment in info.value.message
    assert "\n" not in info.value.message and info.value.exit_code == 2


def test_main_exits_2_on_bad_arguments_without_touching_the_broker(capsys, tmp_path):
    missing = tmp_path / "absent.yaml"  # never read: usage errors come first
    assert module.main(["add", "--timeout", "x", "--config", str(missing)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("celery-submit: argument --timeout") and "Traceback" not in captured.err


def test_main_exits_3_on_a_broken_config_naming_it(capsys, tmp_path):
    broken = tmp_path / "celeryd.yaml"
    broken.write_text("broker:\n  port: many\n")
    assert module.main(["add", "1", "2", "--config", str(broken)]) == 3
    assert f"{broken}: line 2: broker.port: expected an integer" in capsys.readouterr().err


@pytest.mark.parametrize("result, printed", [
    (8, "8"), ("text", "text"), ([1, 2], "[1, 2]"), ({"a": None}, '{"a": null}'), (None, "null"),
])
def test_results_print_plainly_for_scalars_and_as_json_otherwise(result, printed):
    assert module.format_result({"result": result}, as_json=False) == printed


def test_failure_message_names_task_id_and_exception():
    outcome = {"id": "i", "state": "FAILURE",
               "result": {"exc_type": "ZeroDivisionError", "exc_message": ["division by zero"]}}
    assert module.failure_message("celeryd.x", outcome) == (
        "celery-submit: task celeryd.x [i] raised ZeroDivisionError: division by zero")


def test_failure_message_of_a_stored_result_names_the_id_only():
    outcome = {"id": "i", "state": "FAILURE",
               "result": {"exc_type": "KeyError", "exc_message": ["k"]}}
    assert module.failure_message(None, outcome) == "celery-submit: task i raised KeyError: k"


def test_a_task_named_result_stays_reachable_by_its_full_name():
    args = module.parse_args(["celeryd.result", "1"])
    assert (args.task, args.args) == ("celeryd.result", [1])
