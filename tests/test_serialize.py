"""Round trips for every strategy, and wire compatibility with Globus Compute both ways."""

from __future__ import annotations

import binascii
from typing import Any

import dill
import pytest
from globus_compute_sdk.serialize import ComputeSerializer
from globus_compute_sdk.serialize.concretes import (
    DillCode,
    DillDataBase64,
    JSONData,
    PureSourceTextInspect,
)

from sdk import serialize as ser
from sdk.errors import DeserializationError


def double(x: int) -> int:
    return x * 2


DATA: list[Any] = [0, "text", [1, 2, {"a": None}], {"k": (1, 2.5)}, b"\x00bytes", None]


@pytest.mark.parametrize("obj", DATA)
def test_dill_data_round_trip(obj: Any) -> None:
    buf = ser.serialize(obj)
    assert buf.startswith("00\n")
    assert ser.deserialize(buf) == obj


def test_json_data_round_trip() -> None:
    obj = {"a": [1, 2, 3], "b": "c"}
    buf = ser.serialize(obj, ser.JSON_DATA)
    assert buf == '11\n{"a": [1, 2, 3], "b": "c"}'
    assert ser.deserialize(buf) == obj


@pytest.mark.parametrize("strategy", [ser.DILL_CODE, ser.SOURCE_CODE])
def test_code_round_trip(strategy: ser.Strategy) -> None:
    buf = ser.serialize(double, strategy)
    assert buf.startswith(strategy.identifier + "\n")
    assert ser.deserialize(buf)(21) == 42


def test_callables_default_to_dill_code() -> None:
    assert ser.serialize(double).startswith("01\n")


def test_pack_unpack_counts_characters() -> None:
    buffers = ["00\nabc", '11\n"ünïcödé"', ""]
    packed = ser.pack_buffers(buffers)
    assert packed.startswith("6\n00\nabc")
    assert ser.unpack_buffers(packed) == buffers


def test_payload_round_trip() -> None:
    payload = ser.pack_payload((1, "two"), {"three": 3.0})
    assert ser.unpack_payload(payload) == ((1, "two"), {"three": 3.0})


@pytest.mark.parametrize(
    "bad",
    ["", "zz\nabc", "00\nnot base64 dill", "00", "5\n00\na"],
)
def test_bad_buffers_raise_deserialization_error(bad: str) -> None:
    with pytest.raises(DeserializationError):
        if bad.startswith("5\n"):
            ser.unpack_buffers(bad)
        else:
            ser.deserialize(bad)


def test_disallowed_strategy_is_refused() -> None:
    buf = ser.serialize(double)
    with pytest.raises(DeserializationError, match="not allowed"):
        ser.deserialize(buf, allowed={"st", "00"})


def test_payload_with_wrong_buffer_count() -> None:
    with pytest.raises(DeserializationError, match="2 buffers"):
        ser.unpack_payload(ser.pack_buffers([ser.serialize(1)]))


# --- compatibility with Globus Compute's own serializer ------------------------------


def test_a_base64_body_other_than_one_canonical_line_decodes_as_ever() -> None:
    """One canonical line takes the fast codec; anything else the standard library's lenient
    one: spaces and line breaks are skipped, data after the padding is ignored, a body cut
    short is refused."""
    body = ser.serialize(list(range(1000)), ser.DILL_DATA)[3:]
    spaced = " \n".join(body[i : i + 10] for i in range(0, len(body), 10))
    assert ser.deserialize("00\n" + spaced) == list(range(1000))
    assert ser.deserialize("00\n" + ser.serialize(7, ser.DILL_DATA)[3:] + "YQ==") == 7
    with pytest.raises(DeserializationError, match="could not deserialize"):
        ser.deserialize("00\n" + body[:-3])


@pytest.mark.parametrize(
    ("theirs", "ours"),
    [
        (DillDataBase64(), ser.DILL_DATA),
        (JSONData(), ser.JSON_DATA),
    ],
)
def test_data_buffers_interoperate_with_globus_compute(theirs: Any, ours: ser.Strategy) -> None:
    obj = {"x": [1, 2, 3], "y": "z" * 500}  # long enough for Globus's 76-character lines
    gc = ComputeSerializer(strategy_data=theirs)
    assert ser.serialize(obj, ours)[:3] == gc.serialize(obj)[:3]  # the same strategy id
    assert ser.deserialize(gc.serialize(obj)) == obj
    assert gc.deserialize(ser.serialize(obj, ours)) == obj


def test_dill_data_is_one_base64_line() -> None:
    """No line breaks: they cost a Python loop per 57 bytes to write, and an escape each in
    every JSON document that carries the buffer."""
    body = ser.serialize(b"\x00" * 100_000, ser.DILL_DATA)[3:]
    assert "\n" not in body
    assert ser.deserialize("00\n" + body) == b"\x00" * 100_000


@pytest.mark.parametrize(
    ("theirs", "ours"),
    [(DillCode(), ser.DILL_CODE), (PureSourceTextInspect(), ser.SOURCE_CODE)],
)
def test_code_buffers_interoperate_with_globus_compute(theirs: Any, ours: ser.Strategy) -> None:
    gc = ComputeSerializer(strategy_code=theirs)
    assert ser.deserialize(gc.serialize(double))(5) == 10
    assert gc.deserialize(ser.serialize(double, ours))(5) == 10


def test_payload_packed_by_globus_compute_unpacks_with_ours() -> None:
    gc = ComputeSerializer()
    packed = gc.pack_buffers([gc.serialize((1, [2, 3])), gc.serialize({"k": "v"})])
    assert ser.unpack_payload(packed) == ((1, [2, 3]), {"k": "v"})


def test_payload_packed_by_ours_unpacks_with_globus_compute() -> None:
    gc = ComputeSerializer()
    packed = ser.pack_payload((1, [2, 3]), {"k": "v"})
    args_buf, kwargs_buf = gc.unpack_buffers(packed)
    assert gc.deserialize(args_buf) == (1, [2, 3])
    assert gc.deserialize(kwargs_buf) == {"k": "v"}


@pytest.mark.parametrize(
    "obj",
    [(), {}, (3, "a", b"b", 1.5, None, True), {"k": [1, (2, {"n": None})], 7: "x"}],
)
def test_plain_data_is_pickled_as_dill_would_pickle_it(obj: object) -> None:
    """The standard pickler's fast path writes exactly dill's bytes for plain data, so what
    Globus Compute or an older agent reads is unchanged."""
    assert ser._plain(obj)
    body = ser.serialize(obj, ser.DILL_DATA)[3:]
    assert binascii.a2b_base64(body) == dill.dumps(obj)
    assert ser.deserialize(ser.serialize(obj, ser.DILL_DATA)) == obj


class _Name(str):
    pass


@pytest.mark.parametrize(
    "obj",
    [{1, 2}, (_Name("x"),), [lambda: 1], {"deep": list(range(300))}, (1, [2, frozenset()])],
)
def test_anything_else_goes_to_dill(obj: object) -> None:
    assert not ser._plain(obj)
    body = ser.serialize(obj, ser.DILL_DATA)[3:]
    assert binascii.a2b_base64(body) == dill.dumps(obj)


def test_a_call_without_arguments_has_one_payload_made_and_read_without_pickling() -> None:
    gc = ComputeSerializer()
    assert ser.pack_payload() == ser.pack_payload((), {}) == ser.EMPTY_PAYLOAD
    assert [gc.deserialize(b) for b in gc.unpack_buffers(ser.EMPTY_PAYLOAD)] == [(), {}]
    args, kwargs = ser.unpack_payload(ser.EMPTY_PAYLOAD, allowed={"00"})
    assert (args, kwargs) == ((), {})
    kwargs["set by the first call"] = True
    assert ser.unpack_payload(ser.EMPTY_PAYLOAD)[1] == {}, "each call gets its own kwargs"
    with pytest.raises(DeserializationError, match="not allowed"):
        ser.unpack_payload(ser.EMPTY_PAYLOAD, allowed={"11"})


class _Point:
    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Point) and other.x == self.x

    __hash__ = None  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("obj", "stock"),
    [
        *((obj, True) for obj in DATA),
        ({1, 2}, True),
        (_Point(3), True),  # a class importable from its module
        ((_Name("x"),), True),
        ("dill is only a word here", False),  # the check is by bytes: dill reads it
        (list(range(2000)), False),  # too large to be worth the check: dill reads it
        (double, True),  # by reference: its module and name
        (lambda x: x * 2, False),  # by value: dill's own helpers rebuild it
    ],
)
def test_what_the_standard_unpickler_reads_it_reads_as_dill_does(obj: object, stock: bool) -> None:
    raw = binascii.a2b_base64(ser.serialize(obj, ser.DILL_DATA)[3:])
    assert ser._stock_loads_suffices(raw) is stock
    back = ser.deserialize(ser.serialize(obj, ser.DILL_DATA))
    if callable(obj):
        assert back(4) == obj(4)
    else:
        assert back == obj == dill.loads(raw)


def test_a_pickle_naming_dills_mapped_modules_goes_to_dill() -> None:
    for name in (b"__main__", b"__builtin__", b"dill.dill"):
        assert not ser._stock_loads_suffices(b"\x80\x04\x95" + name + b"\x94.")
