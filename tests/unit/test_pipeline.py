"""The pipeline's bookkeeping without a broker: which confirm settles which task, silence,
and the batch's exit code and summary."""

import pytest

from celeryd_pkg import batch
from celeryd_pkg.pipeline import Pipeline, _Entry


class Settings:
    class client:
        timeout = 30

    @staticmethod
    def is_cluster():
        return False


def pipeline_with(count, wait=True):
    """A Pipeline that believes it published count tasks (tags 1..count, ids t1..)."""
    pipeline = Pipeline(Settings, wait=wait)
    for number in range(1, count + 1):
        pipeline._pending[f"t{number}"] = _Entry(number, f"t{number}")
        pipeline._by_tag[number] = f"t{number}"
    return pipeline


def test_a_multiple_ack_settles_every_tag_up_to_it_and_no_later_one():
    pipeline = pipeline_with(5)
    pipeline._on_ack(3, True)
    assert [pipeline._pending[f"t{n}"].confirmed for n in range(1, 6)] == [
        True, True, True, False, False]
    assert list(pipeline._by_tag) == [4, 5]


def test_a_single_ack_settles_only_its_own_tag_even_out_of_order():
    pipeline = pipeline_with(3)
    pipeline._on_ack(2, False)
    assert [pipeline._pending[f"t{n}"].confirmed for n in (1, 2, 3)] == [False, True, False]
    pipeline._on_nack(1, False)
    assert [(o.index, o.state) for o in pipeline._take_done()] == [(1, "NACKED")]
    assert list(pipeline._by_tag) == [3]


def test_a_returned_message_is_reported_returned_when_its_ack_comes():
    class Message:
        properties = {"correlation_id": "t2"}

    pipeline = pipeline_with(3)
    pipeline._on_return(None, "q", "q", Message)
    pipeline._on_ack(3, True)
    outcomes = list(pipeline._take_done())
    assert [(o.index, o.state) for o in outcomes] == [(2, "RETURNED")]
    assert set(pipeline._pending) == {"t1", "t3"}


def test_without_wait_confirms_yield_sent_in_input_order():
    pipeline = pipeline_with(4, wait=False)
    pipeline._on_ack(2, True)
    pipeline._on_ack(4, True)
    assert [(o.index, o.state, o.id) for o in pipeline._take_done()] == [
        (n, "SENT", f"t{n}") for n in range(1, 5)]
    assert not pipeline._pending


def test_a_reply_before_its_confirm_is_the_outcome_and_the_confirm_is_ignored():
    class Reply:
        body = '{"status": "SUCCESS", "result": 8}'
        properties = {"correlation_id": "t1"}

    pipeline = pipeline_with(2)
    pipeline._on_reply(Reply)
    pipeline._on_ack(2, True)
    assert [(o.index, o.state, o.result) for o in pipeline._take_done()] == [(1, "SUCCESS", 8)]
    assert list(pipeline._pending) == ["t2"] and pipeline._pending["t2"].confirmed


def test_silence_longer_than_the_timeout_reports_every_pending_task():
    pipeline = pipeline_with(3)
    pipeline._on_ack(2, True)
    pipeline._expire()
    assert not list(pipeline._take_done()), "not silent long enough yet"
    pipeline._last_news -= 31
    pipeline._expire()
    assert [(o.index, o.state) for o in pipeline._take_done()] == [
        (1, "TIMEOUT"), (2, "TIMEOUT"), (3, "UNCONFIRMED")]
    assert not pipeline._pending and not pipeline._by_tag


@pytest.mark.parametrize("counts, code", [
    ({"SUCCESS": 3}, 0), ({"SENT": 3}, 0), ({}, 0),
    ({"SUCCESS": 2, "FAILURE": 1}, 1),
    ({"FAILURE": 1, "TIMEOUT": 1}, 6), ({"LOST": 1, "SUCCESS": 9}, 6),
    ({"TIMEOUT": 1, "NOT_SENT": 1}, 4), ({"NACKED": 1}, 4), ({"RETURNED": 1}, 4),
    ({"UNCONFIRMED": 1, "FAILURE": 5}, 4),
])
def test_the_exit_code_is_that_of_the_worst_outcome(counts, code):
    assert batch.exit_code(counts) == code


def test_the_summary_counts_every_line_by_outcome():
    assert batch.summary({"SUCCESS": 9990, "FAILURE": 2, "NOT_SENT": 8}) == (
        "10000 lines: 9990 succeeded, 2 raised, 8 not sent (resend them)")
