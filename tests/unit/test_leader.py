"""What a scheduler makes of the state the previous leader left on the broker."""

import math

from celeryd_pkg.leader import clean_state


def test_a_state_that_is_not_a_mapping_is_no_state():
    assert clean_state(["tick"]) is None
    assert clean_state("leader") is None


def test_malformed_times_are_dropped_so_they_cannot_stop_the_next_leader():
    state = clean_state({"leader": "web1", "fired": ["tick"], "released": True,
                         "next": {"tick": math.nan, "nightly": 1800.0, "odd": "soon"}})
    assert state == {"leader": "web1", "fired": {}, "released": None,
                     "next": {"nightly": 1800.0}}
    state = clean_state({"fired": {"tick": 1010.0, "bad": math.inf, "flag": False, 7: 3},
                         "released": 1019.5})
    assert state["fired"] == {"tick": 1010.0, "7": 3} and state["released"] == 1019.5


def test_the_local_state_file_is_cleaned_like_the_brokers(tmp_path):
    from celeryd_pkg.beat import LocalState

    local = LocalState(str(tmp_path))
    assert local.fired() == {}  # no file yet
    (tmp_path / "beat-state.json").write_text('{"fired": {"tick": 1010.0, "bad": NaN}}')
    assert local.fired() == {"tick": 1010.0}
    (tmp_path / "beat-state.json").write_text('["not", "a", "state"]')
    assert local.fired() == {}
