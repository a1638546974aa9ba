"""The renderers' JSON encoder writes exactly what ``json.dumps(value, indent=2)`` writes."""

from __future__ import annotations

import enum
import json
import math
import random
from typing import Any

import pytest
import torch

from initscope.io.models import trace_model
from initscope.io.targets import ModelSpec
from initscope.measure.report import report_model
from initscope.render import jsontext
from initscope.render.report import report_to_dict


class Colour(str, enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


CASES: list[Any] = [
    0,
    -1,
    10**30,
    1.5,
    -0.0,
    5e-324,
    1e308,
    math.nan,
    math.inf,
    -math.inf,
    "",
    'é\n"\\\x00\x1fü😀\u2028',  # escapes, non-ASCII, a surrogate pair
    None,
    True,
    False,
    [],
    {},
    [[]],
    {"a": {}},
    (1, (2, [])),
    {"a": [1, {"b": None, "c": [True, False]}], "d": -2.5},
    {2: "int", 1.5: "float", True: "bool", False: "no", None: "none", "s": "str", math.inf: "inf"},
    Colour.RED,
    Level.HIGH,
    {"colour": Colour.RED, "level": Level.HIGH, "list": [Colour.RED, (Level.HIGH,)]},
]


@pytest.mark.parametrize("value", CASES, ids=repr)
def test_each_value_is_written_as_json_dumps_writes_it(value: Any) -> None:
    assert jsontext.dumps(value) == json.dumps(value, indent=2)


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randint(-(10**20), 10**20)
    if kind == 2:
        return rng.choice([rng.uniform(-1e6, 1e6), rng.random() * 1e-300, -0.0, math.nan])
    if kind in (3, 4, 5):
        return "".join(
            chr(rng.choice([rng.randrange(32, 127), rng.randrange(0, 0x2FFF)]))
            for _ in range(rng.randrange(6))
        )
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 7:
        return tuple(_random_value(rng, depth + 1) for _ in range(rng.randrange(3)))
    return {
        f"k{rng.randrange(100)}": _random_value(rng, depth + 1) for _ in range(rng.randrange(5))
    }


def test_random_nested_values_are_written_as_json_dumps_writes_them() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        value = _random_value(rng)
        assert jsontext.dumps(value) == json.dumps(value, indent=2)


def test_equal_keys_of_other_types_are_written_as_their_own() -> None:
    """1, 1.0 and True are equal dict keys that JSON writes differently: key texts kept for
    one dict's keys are never another's."""
    value = [{1: "a"}, {1.0: "b"}, {True: "c"}, {"1": "d"}, {1: "e"}, {None: 0}, {"null": 1}]
    assert jsontext.dumps(value) == json.dumps(value, indent=2)


def test_what_json_refuses_it_refuses() -> None:
    for value in (math.nan, [math.inf], {"x": -math.inf}, {math.nan: 1}):
        with pytest.raises(ValueError, match="not JSON compliant"):
            jsontext.dumps(value, allow_nan=False)
    assert jsontext.dumps([1.0], allow_nan=False) == json.dumps([1.0], indent=2, allow_nan=False)
    with pytest.raises(TypeError, match="not JSON serializable"):
        jsontext.dumps({"a": object()})
    with pytest.raises(TypeError, match="keys must be"):
        jsontext.dumps({(1, 2): 3})


def test_a_whole_report_is_the_same_text() -> None:
    torch.manual_seed(0)
    traced = trace_model(ModelSpec("initscope.examples:UNet"))
    data = report_to_dict(report_model(traced, target="initscope.examples:UNet"))
    assert len(data["parameters"]) > 10
    assert jsontext.dumps(data) == json.dumps(data, indent=2)
