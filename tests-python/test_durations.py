"""The harness reads durations as the server does: leasehold_kit.durations against the vectors
Swift's parseDuration is checked with (Tests/LeaseholdAppTests/Golden/durations.json)."""

import json
from pathlib import Path

import pytest
from leasehold_kit.durations import BadDuration, parse_duration

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "Tests/LeaseholdAppTests/Golden/durations.json").read_text()
)["vectors"]


@pytest.mark.parametrize("text,milliseconds", VECTORS)
def test_duration_vectors(text, milliseconds):
    if milliseconds is None:
        with pytest.raises(BadDuration):
            parse_duration(text, "LH_X")
    else:
        assert round(parse_duration(text) * 1000) == milliseconds


def test_a_bad_duration_names_its_setting():
    with pytest.raises(BadDuration, match="LH_LEASE_TTL: 'soon' is not a duration"):
        parse_duration("soon", "LH_LEASE_TTL")
