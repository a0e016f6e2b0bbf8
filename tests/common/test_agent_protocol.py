"""The agent <-> gateway protocol on plain data: every frame's round trip, every validation
error, and the rules of the gateway's ledger and the agent's outbox."""

from __future__ import annotations

import math
import pickle
import random
from typing import Any

import msgpack
import pytest

from sdk.messages import exception_record
from sdk.states import TaskState
from service_common import agent_protocol as p
from service_common.agent_protocol import (
    Cancel,
    Capacity,
    Credit,
    DeliveryRef,
    Drain,
    Error,
    FunctionCode,
    Functions,
    HandBack,
    Hello,
    Ledger,
    NeedCode,
    Outbox,
    Outcomes,
    ProtocolError,
    Refusal,
    Settled,
    Status,
    Task,
    TaskOutcome,
    Tasks,
    Welcome,
    Withdraw,
    Withdrawn,
    codec,
)
from service_common.errors import ServiceError

CAPACITY = Capacity("process", 2, 1000, 1, ("0", "1"))


def ref(n: int) -> DeliveryRef:
    return DeliveryRef(f"t{n}", f"1700-{n}/1")


def task(n: int, function_id: str = "f1", payload: str = "11\n[1]") -> Task:
    return Task(f"t{n}", f"1700-{n}/1", 1, function_id, payload, None)


def success(n: int, result: str = "11\n42", delivery: str | None = None) -> TaskOutcome:
    return TaskOutcome(
        f"t{n}", delivery or f"1700-{n}/1", TaskState.SUCCESS, 1700000001.5, result=result
    )


def raw(**fields: Any) -> bytes:
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


def hello(**changes: Any) -> Hello:
    fields: dict[str, Any] = {
        "versions": (1,),
        "agent": "node7-4242",
        "host": "node7",
        "version": "0.1.0",
        "capacity": CAPACITY,
    }
    return Hello(**(fields | changes))


# -- round trips -----------------------------------------------------------------------

FAILED = TaskOutcome(
    "t2",
    "1700-2/3",
    TaskState.FAILED,
    1700000002.0,
    exception=exception_record(ZeroDivisionError("division by zero")),
    stdout="printed\n",
    stderr="warned ü\n",
    started_at=1700000001.0,
)
AGENT_FRAMES: list[p.AgentFrame] = [
    hello(),
    hello(versions=(1, 2), running=(ref(1), ref(2)), held=(ref(3),)),
    Credit(1),
    Credit(p.CREDIT_MAX),
    Withdraw(1),
    Withdraw(p.CREDIT_MAX),
    Outcomes((success(1), FAILED, TaskOutcome("t3", "d3", TaskState.CANCELLED, 0.0))),
    Outcomes(()),
    Status(workers=2, busy=2, queued=5, held=1, draining=True),
    Status(workers=0, busy=0, queued=0, held=0),
    HandBack((ref(1), ref(2))),
    NeedCode(("f1", "f2")),
]
GATEWAY_FRAMES: list[p.GatewayFrame] = [
    Welcome(1, "ep-1", 30_000, 5.0),
    Welcome(1, "ep-1", 30_000, 0.5, 60.0, ("00", "st"), 1024 * 1024, ("t1", "t9")),
    Tasks(
        (task(1), Task("t2", "1700-2/2", 2, "f2", "00\nabc", 2.5)), (FunctionCode("f1", "01\nx"),)
    ),
    Tasks((Task("t3", "1700-3/1", 1, "f1", "00\nabc", None, ("11", "00")),)),
    Tasks(()),
    Withdrawn(0),
    Withdrawn(7),
    Functions((FunctionCode("f1", "01\nx"),), ("f9",)),
    Settled(("1700-1/1",), (Refusal("t2", "1700-2/1", p.NOT_HANDED, "not yours"),)),
    Cancel(("t1", "t2")),
    Drain(),
    Drain(12.5),
    Error(p.UNAVAILABLE, "Redis is away; retrying"),
]


@pytest.mark.parametrize("frame", AGENT_FRAMES, ids=lambda f: type(f).__name__)
def test_every_agent_frame_round_trips(frame: p.AgentFrame) -> None:
    data = p.encode(frame)
    assert isinstance(data, bytes)
    assert p.decode_agent_frame(data) == frame


@pytest.mark.parametrize("frame", GATEWAY_FRAMES, ids=lambda f: type(f).__name__)
def test_every_gateway_frame_round_trips(frame: p.GatewayFrame) -> None:
    data = p.encode(frame)
    assert p.decode_gateway_frame(data) == frame


def test_the_wire_is_one_msgpack_map_with_the_documented_field_names() -> None:
    wire = msgpack.unpackb(p.encode(Tasks((task(1),), (FunctionCode("f1", "01\nx"),))))
    assert wire == {
        "type": "tasks",
        "functions": [{"function_id": "f1", "code": "01\nx"}],
        "tasks": [
            {
                "task_id": "t1",
                "delivery_id": "1700-1/1",
                "attempt": 1,
                "function_id": "f1",
                "payload": "11\n[1]",
                "walltime_s": None,
            }
        ],
    }
    wire = msgpack.unpackb(p.encode(Outcomes((success(1),))))
    assert wire == {
        "type": "outcomes",
        "outcomes": [
            {
                "task_id": "t1",
                "delivery_id": "1700-1/1",
                "state": "success",
                "completed_at": 1700000001.5,
                "result": "11\n42",
            }
        ],
    }
    listing = Task("t2", "d2", 1, "f1", "11\n[1]", None, ("11", "00"))
    [sent] = msgpack.unpackb(p.encode(Tasks((listing,))))["tasks"]
    assert sent["result_strategies"] == ["11", "00"]


def test_a_lone_surrogate_a_task_printed_is_sent_as_a_question_mark() -> None:
    printed = TaskOutcome("t1", "d1", TaskState.CANCELLED, 1.0, stdout="caf\udce9\n")
    [decoded] = p.decode_agent_frame(p.encode(Outcomes((printed,)))).outcomes  # type: ignore[union-attr]
    assert decoded.stdout == "caf?\n"


def test_receivers_ignore_fields_they_do_not_know() -> None:
    data = raw(type="credit", grant=3, window_hint="later versions may add this")
    assert p.decode_agent_frame(data) == Credit(3)


def test_an_outcome_record_must_fit_its_state() -> None:
    with pytest.raises(ValueError, match="success outcome carries a result"):
        TaskOutcome("t", "d", TaskState.SUCCESS, 1.0)
    with pytest.raises(ValueError, match="failed outcome carries an exception"):
        TaskOutcome("t", "d", TaskState.FAILED, 1.0, result="11\n1")
    with pytest.raises(ValueError, match="terminal"):
        TaskOutcome("t", "d", TaskState.RUNNING, 1.0)


# -- validation ------------------------------------------------------------------------

OUTCOME: dict[str, Any] = {
    "task_id": "t1",
    "delivery_id": "d1",
    "state": "success",
    "completed_at": 1.0,
    "result": "11\n1",
}
TASK: dict[str, Any] = {
    "task_id": "t1",
    "delivery_id": "d1",
    "attempt": 1,
    "function_id": "f1",
    "payload": "11\n1",
    "walltime_s": None,
}
HELLO: dict[str, Any] = {
    "type": "hello",
    "versions": [1],
    "agent": "a1",
    "host": "h",
    "version": "0.1",
    "capacity": {
        "engine": "process",
        "workers": 1,
        "max_concurrency": 1,
        "prefetch": 0,
        "accelerators": [],
    },
}
WELCOME: dict[str, Any] = {
    "type": "welcome",
    "version": 1,
    "endpoint_id": "ep",
    "lease_ms": 30000,
    "heartbeat_s": 5.0,
    "walltime_s": None,
    "allowed_strategies": None,
    "max_frame_bytes": 1 << 20,
    "lost": [],
}
TOO_MANY = [f"t{i}" for i in range(p.ITEMS_PER_FRAME_MAX + 1)]


def outcome(**changes: Any) -> dict[str, Any]:
    return {k: v for k, v in (OUTCOME | changes).items() if v is not ...}


def with_task(**changes: Any) -> bytes:
    fields = {k: v for k, v in (TASK | changes).items() if v is not ...}
    return raw(type="tasks", tasks=[fields])


AGENT_ERRORS: list[tuple[object, str]] = [
    ("text frame", "must be a binary message"),
    (b"\xc1", "not one msgpack value: "),
    (b"", "not one msgpack value"),
    (raw(type="credit", grant=1) + b"\x00", "not one msgpack value"),
    (msgpack.packb([1, 2]), "must be a msgpack map, not list"),
    (msgpack.packb({1: 2}), "not one msgpack value"),
    (raw(grant=1), "unknown type None"),
    (raw(type="welcome"), "unknown type 'welcome'"),
    (raw(type=7), "unknown type 7"),
    (raw(type="credit"), "credit.grant is missing"),
    (raw(type="credit", grant=0), "credit.grant must be an integer from 1"),
    (raw(type="credit", grant=p.CREDIT_MAX + 1), "credit.grant must be an integer"),
    (raw(type="credit", grant=True), "credit.grant must be an integer"),
    (raw(type="credit", grant=2.0), "credit.grant must be an integer"),
    (raw(type="credit", grant="2"), "credit.grant must be an integer"),
    (raw(type="outcomes"), "outcomes.outcomes is missing"),
    (raw(type="outcomes", outcomes={}), "outcomes.outcomes must be a list"),
    (raw(type="outcomes", outcomes=[7]), "outcomes.outcomes[0] must be a map, not int"),
    (raw(type="outcomes", outcomes=[outcome(state="running")]), "outcomes.outcomes[0].state"),
    (raw(type="outcomes", outcomes=[outcome(state=...)]), "outcomes.outcomes[0].state"),
    (raw(type="outcomes", outcomes=[OUTCOME, outcome(task_id="")]), "outcomes[1].task_id"),
    (raw(type="outcomes", outcomes=[outcome(task_id="a b")]), "outcomes[0].task_id"),
    (raw(type="outcomes", outcomes=[outcome(task_id="x" * 129)]), "outcomes[0].task_id"),
    (raw(type="outcomes", outcomes=[outcome(delivery_id=...)]), "delivery_id is missing"),
    (raw(type="outcomes", outcomes=[outcome(result=...)]), "success outcome carries a result"),
    (raw(type="outcomes", outcomes=[outcome(result=b"11\n1")]), "outcomes[0].result must be"),
    (raw(type="outcomes", outcomes=[outcome(state="failed")]), "failed outcome carries"),
    (raw(type="outcomes", outcomes=[outcome(state="cancelled")]), "cancelled outcome carries"),
    (
        raw(type="outcomes", outcomes=[outcome(state="failed", result=..., exception={})]),
        "outcomes[0].exception.type is missing",
    ),
    (
        raw(type="outcomes", outcomes=[outcome(state="failed", result=..., exception="boom")]),
        "outcomes[0].exception must be a map",
    ),
    (raw(type="outcomes", outcomes=[outcome(completed_at=math.nan)]), "completed_at must be"),
    (raw(type="outcomes", outcomes=[outcome(completed_at=math.inf)]), "completed_at must be"),
    (raw(type="outcomes", outcomes=[outcome(completed_at=-1.0)]), "completed_at must be"),
    (raw(type="outcomes", outcomes=[outcome(started_at="now")]), "started_at must be"),
    (raw(type="outcomes", outcomes=[outcome(stdout=1)]), "outcomes[0].stdout must be a string"),
    (raw(type="outcomes", outcomes=[OUTCOME] * (p.ITEMS_PER_FRAME_MAX + 1)), "at most 10000"),
    (raw(type="status", workers=1, busy=-1, queued=0, held=0), "status.busy must be"),
    (raw(type="status", workers=1, busy=0, queued=0), "status.held is missing"),
    (raw(type="status", workers=1, busy=0, queued=0, held=0, draining=1), "status.draining"),
    (raw(type="hand_back", tasks=[{"task_id": "t1"}]), "hand_back.tasks[0].delivery_id"),
    (raw(type="withdraw", count=0), "withdraw.count must be an integer from 1"),
    (raw(type="withdraw", count=p.CREDIT_MAX + 1), "withdraw.count must be an integer from 1"),
    (raw(type="withdraw", count=True), "withdraw.count must be"),
    (raw(type="withdraw"), "withdraw.count is missing"),
    (raw(type="need_code", function_ids=["f1", 2]), "need_code.function_ids[1] must be an id"),
    (raw(type="need_code", function_ids=TOO_MANY), "need_code.function_ids lists 10001"),
    (raw(**HELLO | {"versions": []}), "hello.versions must list at least one"),
    (raw(**HELLO | {"versions": [True]}), "hello.versions must list"),
    (raw(**HELLO | {"versions": "1"}), "hello.versions must be a list"),
    (raw(**HELLO | {"agent": None}), "hello.agent must be"),
    (raw(**HELLO | {"host": "h" * 1025}), "hello.host must be at most 1024 characters"),
    (raw(**HELLO | {"capacity": []}), "hello.capacity must be a map"),
    (raw(**HELLO | {"capacity": {}}), "hello.capacity.engine is missing"),
    (
        raw(**HELLO | {"capacity": HELLO["capacity"] | {"accelerators": [""]}}),
        "hello.capacity.accelerators[0] must be a non-empty string",
    ),
    (raw(**HELLO | {"running": [{}]}), "hello.running[0].task_id is missing"),
    (raw(**HELLO | {"held": None}), "hello.held must be a list"),
    (msgpack.packb({"type": "credit", "grant": msgpack.ExtType(5, b"x")}), "credit.grant"),
    (msgpack.packb([[[[]]]] * 3), "must be a msgpack map"),
]


@pytest.mark.parametrize(("data", "fragment"), AGENT_ERRORS)
def test_a_malformed_agent_frame_is_a_precise_bad_frame_error(data: object, fragment: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        p.decode_agent_frame(data)
    assert caught.value.code == p.BAD_FRAME
    assert fragment in caught.value.message
    assert caught.value.fatal


GATEWAY_ERRORS: list[tuple[object, str]] = [
    (raw(type="hello"), "unknown type 'hello'"),
    (with_task(attempt=0), "tasks.tasks[0].attempt must be an integer from 1"),
    (with_task(attempt=...), "tasks.tasks[0].attempt is missing"),
    (with_task(walltime_s=0), "tasks.tasks[0].walltime_s must be a finite number above 0"),
    (with_task(walltime_s=-1.0), "walltime_s must be a finite number above 0"),
    (with_task(payload=None), "tasks.tasks[0].payload must be a string"),
    (with_task(result_strategies="11"), "tasks.tasks[0].result_strategies must be a list"),
    (with_task(result_strategies=[""]), "tasks.tasks[0].result_strategies[0] must be a non-empty"),
    (with_task(function_id="f 1"), "tasks.tasks[0].function_id must be"),
    (raw(type="tasks", tasks=[TASK], functions=[{"function_id": "f1"}]), "functions[0].code"),
    (raw(type="functions", functions=[], missing=[1]), "functions.missing[0] must be an id"),
    (raw(type="settled", delivery_ids="d1"), "settled.delivery_ids must be a list"),
    (raw(type="settled", delivery_ids=[], refused=[{"task_id": "t"}]), "refused[0].delivery"),
    (raw(type="cancel", task_ids=TOO_MANY), "cancel.task_ids lists 10001 items"),
    (raw(type="withdrawn", count=-1), "withdrawn.count must be an integer from 0"),
    (raw(type="withdrawn", count=2.0), "withdrawn.count must be"),
    (raw(type="drain", grace_s="soon"), "drain.grace_s must be a finite number"),
    (raw(type="error", code="BAD FRAME", message="m"), "error.code must be"),
    (raw(type="error", code="X", message="m" * 1025), "error.message must be at most"),
    (raw(**WELCOME | {"version": 0}), "welcome.version must be an integer from 1"),
    (raw(**WELCOME | {"lease_ms": 0}), "welcome.lease_ms"),
    (raw(**WELCOME | {"heartbeat_s": 0}), "welcome.heartbeat_s must be a finite number above 0"),
    (raw(**WELCOME | {"max_frame_bytes": p.FRAME_BYTES_MAX + 1}), "welcome.max_frame_bytes"),
    (raw(**WELCOME | {"allowed_strategies": "00"}), "welcome.allowed_strategies must be a list"),
    (raw(**WELCOME | {"lost": [None]}), "welcome.lost[0] must be an id"),
]


@pytest.mark.parametrize(("data", "fragment"), GATEWAY_ERRORS)
def test_a_malformed_gateway_frame_is_a_precise_bad_frame_error(
    data: object, fragment: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        p.decode_gateway_frame(data)
    assert caught.value.code == p.BAD_FRAME
    assert fragment in caught.value.message


ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    1,
    2**60,
    -1,
    0.0,
    2.5,
    math.nan,
    math.inf,
    "",
    "x",
    "a b",
    "x" * 129,
    b"bytes",
    [],
    {},
    "success",
    "cancelled",
    "failed",
]


@pytest.mark.parametrize(
    ("record", "fast", "precise"),
    [
        (TASK, codec._fast_task, codec._parse_task),
        (OUTCOME, codec._fast_outcome, codec._parse_outcome),
        (
            outcome(state="cancelled", result=..., stdout="o", started_at=0.5),
            codec._fast_outcome,
            codec._parse_outcome,
        ),
        ({"task_id": "t1", "delivery_id": "d1"}, codec._fast_ref, codec._parse_ref),
    ],
)
def test_the_fast_path_accepts_nothing_the_precise_one_refuses(
    record: dict[str, Any], fast: Any, precise: Any
) -> None:
    """Hot records are checked inline first; whatever that accepts, the precise validator
    accepts too, giving the same record, field by field and value by value."""
    variants = (
        [record]
        + [
            record | {key: value}
            for key in [
                *record,
                "stdout",
                "started_at",
                "result",
                "walltime_s",
                "result_strategies",
            ]
            for value in ODD_VALUES
        ]
        + [{k: v for k, v in record.items() if k != key} for key in record]
    )
    accepted = 0
    for variant in variants:
        quick = fast(variant)
        try:
            expected = precise(codec._Fields(variant, "r"))
        except ProtocolError:
            assert quick is None, variant
            continue
        assert quick is None or quick == expected, variant
        accepted += quick is not None
    assert accepted >= 2
    assert fast([record]) is None


def test_a_whole_number_on_the_wire_is_read_as_seconds() -> None:
    [t] = p.decode_gateway_frame(with_task(walltime_s=2)).tasks  # type: ignore[union-attr]
    assert t.walltime_s == 2.0 and isinstance(t.walltime_s, float)
    [o] = p.decode_agent_frame(raw(type="outcomes", outcomes=[outcome(completed_at=7)])).outcomes  # type: ignore[union-attr]
    assert o.completed_at == 7.0 and isinstance(o.completed_at, float)


def test_a_frame_past_the_size_limit_is_refused_before_it_is_unpacked() -> None:
    data = p.encode(Outcomes((success(1, result="11\n" + "x" * 5000),)))
    assert p.decode_agent_frame(data, max_frame_bytes=len(data)) is not None
    with pytest.raises(ProtocolError, match=f"is {len(data)} bytes; at most {len(data) - 1}"):
        p.decode_agent_frame(data, max_frame_bytes=len(data) - 1)


def test_a_long_bad_value_is_described_not_echoed() -> None:
    with pytest.raises(ProtocolError) as caught:
        p.decode_agent_frame(raw(type="credit", grant="9" * 10_000))
    assert "a str of 10002 characters" in caught.value.message
    assert len(caught.value.message) < 200


def test_damaged_frames_only_ever_raise_protocol_errors() -> None:
    """Never a crash: every byte-level damage of valid frames decodes or is a BAD_FRAME."""
    rng = random.Random(11)
    frames = [p.encode(f) for f in [*AGENT_FRAMES, *GATEWAY_FRAMES]]
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(3000):
        data = bytearray(rng.choice(frames))
        for _ in range(rng.randint(1, 4)):
            cut = rng.randrange(len(data) + 1)
            action = rng.randrange(3)
            if action == 0 and cut < len(data):
                data[cut] = rng.randrange(256)
            elif action == 1:
                del data[cut:]
            else:
                data[cut:cut] = rng.randbytes(rng.randint(1, 8))
        for decode in (p.decode_agent_frame, p.decode_gateway_frame):
            try:
                decode(bytes(data))
                outcomes["decoded"] += 1
            except ProtocolError as exc:
                assert exc.code == p.BAD_FRAME
                outcomes["refused"] += 1
    assert outcomes["refused"] > 1000 and outcomes["decoded"] > 0


def test_a_protocol_error_is_a_service_error_that_survives_pickling() -> None:
    error = ProtocolError(p.CREDIT_OVERFLOW, "too much")
    assert isinstance(error, ServiceError)
    again = pickle.loads(pickle.dumps(error))
    assert (again.code, again.message, str(again)) == (
        p.CREDIT_OVERFLOW,
        "too much",
        "CREDIT_OVERFLOW: too much",
    )
    assert error.frame() == Error(p.CREDIT_OVERFLOW, "too much")
    assert error.fatal and p.CLOSE_CODES[error.code] == 1008
    assert not ProtocolError(p.UNAVAILABLE, "later").fatal
    assert set(p.CLOSE_CODES) == p.FATAL_CODES


def test_versions_negotiate_to_the_highest_shared_one() -> None:
    assert p.negotiate([1], p.SUPPORTED_VERSIONS) == p.PROTOCOL_VERSION == 1
    assert p.negotiate([3, 1, 2], [1, 2]) == 2
    with pytest.raises(ProtocolError) as caught:
        p.negotiate([2, 3], [1])
    assert caught.value.code == p.UNSUPPORTED_VERSION
    assert "agent speaks versions [2, 3], the gateway [1]" in caught.value.message


# -- the gateway's ledger --------------------------------------------------------------


def greeted(credit: int = 0, **kwargs: Any) -> Ledger:
    ledger = Ledger(**kwargs)
    ledger.greet(hello())
    if credit:
        ledger.grant(Credit(credit))
    return ledger


def test_hello_comes_first_and_once() -> None:
    ledger = Ledger()
    with pytest.raises(ProtocolError) as caught:
        ledger.admit(Credit(1))
    assert (caught.value.code, caught.value.message) == (
        p.UNEXPECTED_FRAME,
        "a credit frame came before hello",
    )
    assert ledger.greet(hello(versions=(1, 7))) == 1
    assert (ledger.version, ledger.agent) == (1, "node7-4242")
    ledger.admit(Credit(1))
    with pytest.raises(ProtocolError, match="hello was already said") as caught:
        ledger.admit(hello())
    assert caught.value.fatal


def test_a_hello_without_a_shared_version_is_refused() -> None:
    ledger = Ledger()
    with pytest.raises(ProtocolError) as caught:
        ledger.greet(hello(versions=(2,)))
    assert caught.value.code == p.UNSUPPORTED_VERSION
    assert ledger.version is None


def test_credit_adds_up_and_is_bounded() -> None:
    ledger = greeted(3)
    ledger.grant(Credit(4))
    assert ledger.credit == 7
    with pytest.raises(ProtocolError) as caught:
        ledger.grant(Credit(p.CREDIT_MAX - 6))
    assert caught.value.code == p.CREDIT_OVERFLOW
    assert ledger.credit == 7


def test_a_withdraw_takes_back_only_credit_not_used_or_reserved() -> None:
    ledger = greeted(10)
    assert ledger.withdraw(Withdraw(7)) == Withdrawn(7)
    assert ledger.credit == 3
    ledger.window([task(1)], {"f1": "01\nx"})
    assert ledger.credit == 2
    # A read in flight reserved one: only the other may be taken back, however many asked.
    assert ledger.withdraw(Withdraw(5), reserved=1) == Withdrawn(1)
    assert ledger.credit == 1
    assert ledger.withdraw(Withdraw(1), reserved=1) == Withdrawn(0)
    assert len(ledger.window([task(2)], {})) == 1
    assert ledger.withdraw(Withdraw(3)) == Withdrawn(0)
    assert (ledger.credit, ledger.handed) == (0, 2)
    with pytest.raises(ValueError, match="reserved must be at least 0"):
        ledger.withdraw(Withdraw(1), reserved=-1)


def test_the_agents_count_stays_exact_across_a_withdraw() -> None:
    """granted - received - withdrawn on the agent's side equals the ledger's credit."""
    ledger = greeted(0)
    granted = received = withdrawn = 0
    rng = random.Random(7)
    for n in range(200):
        step = rng.choice(("grant", "window", "withdraw"))
        if step == "grant":
            grant = rng.randint(1, 5)
            ledger.grant(Credit(grant))
            granted += grant
        elif step == "window" and ledger.credit:
            count = rng.randint(1, ledger.credit)
            frames = ledger.window([task(n * 1000 + i) for i in range(count)], {"f1": "01\nx"})
            received += sum(len(f.tasks) for f in frames)
        elif step == "withdraw":
            reserved = rng.randint(0, ledger.credit)
            withdrawn += ledger.withdraw(Withdraw(rng.randint(1, 6)), reserved=reserved).count
        assert granted - received - withdrawn == ledger.credit >= 0


def test_a_window_never_exceeds_the_credit_and_a_refused_one_changes_nothing() -> None:
    ledger = greeted(2)
    with pytest.raises(ValueError, match="3 tasks but the agent granted only 2"):
        ledger.window([task(1), task(2), task(3)], {"f1": "01\nx"})
    assert (ledger.credit, ledger.handed, ledger.leases()) == (2, 0, [])
    assert ledger.needs_code(["f1"]) == ["f1"]
    [frame] = ledger.window([task(1), task(2)], {"f1": "01\nx"})
    assert frame.tasks == (task(1), task(2))
    assert (ledger.credit, ledger.handed) == (0, 2)
    with pytest.raises(ValueError, match="1 tasks but the agent granted only 0"):
        ledger.window([task(3)], {})
    ledger.grant(Credit(1))
    assert len(ledger.window([task(3)], {})) == 1
    assert ledger.credit == 0


def test_code_goes_once_per_function_per_connection() -> None:
    ledger = greeted(10)
    assert ledger.needs_code(["f1", "f2", "f1"]) == ["f1", "f2"]
    [first] = ledger.window(
        [task(1, "f1"), task(2, "f2"), task(3, "f1")], {"f1": "01\na", "f2": "01\nb"}
    )
    assert first.functions == (FunctionCode("f1", "01\na"), FunctionCode("f2", "01\nb"))
    assert ledger.needs_code(["f1", "f2", "f3"]) == ["f3"]
    [second] = ledger.window([task(4, "f2"), task(5, "f3")], {"f3": "01\nc", "f2": "unused"})
    assert second.functions == (FunctionCode("f3", "01\nc"),)
    with pytest.raises(ValueError, match="the code of function f4 is needed"):
        ledger.window([task(6, "f4")], {})
    # A new connection of the same agent starts over: code goes again.
    assert greeted(1).needs_code(["f1"]) == ["f1"]


def test_a_function_the_agent_evicted_is_sent_again_on_request() -> None:
    ledger = greeted(2)
    ledger.window([task(1, "f1")], {"f1": "01\na"})
    [answer] = ledger.functions(NeedCode(("f1", "gone")), {"f1": "01\na", "gone": None})
    assert answer == Functions((FunctionCode("f1", "01\na"),), ("gone",))
    assert ledger.needs_code(["f1", "gone"]) == ["gone"]


def test_a_delivery_is_handed_once() -> None:
    ledger = greeted(3)
    ledger.window([task(1)], {"f1": "01\na"})
    with pytest.raises(ValueError, match="delivery 1700-1/1 is already handed"):
        ledger.window([task(1)], {})
    with pytest.raises(ValueError, match="delivery 1700-2/1 is already handed"):
        ledger.window([task(2), task(2)], {})
    assert (ledger.credit, ledger.handed) == (2, 1)


def test_a_window_too_big_for_one_frame_is_split_with_code_where_first_needed() -> None:
    ledger = greeted(10, max_frame_bytes=4096)
    tasks = [
        task(1, "f1", "11\n" + "x" * 1500),
        task(2, "f1", "11\n" + "y" * 1500),
        task(3, "f2", "11\n" + "z" * 1500),
    ]
    frames = ledger.window(tasks, {"f1": "01\na", "f2": "01\nb"})
    assert [f.tasks for f in frames] == [(tasks[0], tasks[1]), (tasks[2],)]
    assert [f.functions for f in frames] == [
        (FunctionCode("f1", "01\na"),),
        (FunctionCode("f2", "01\nb"),),
    ]
    assert all(len(p.encode(f)) <= 4096 for f in frames)
    [alone] = greeted(1, max_frame_bytes=1024).window([task(4, "f1", "x" * 9000)], {"f1": "c"})
    assert alone.tasks == (task(4, "f1", "x" * 9000),)


def test_only_outcomes_of_deliveries_handed_to_this_connection_are_accepted() -> None:
    ledger = greeted(2)
    ledger.window([task(1), task(2)], {"f1": "01\na"})
    accepted = ledger.accept(
        Outcomes(
            (
                success(1),
                success(2, delivery="1700-2/0"),  # an earlier delivery of a handed task
                success(9),  # never handed
                TaskOutcome("t-other", "1700-1/1", TaskState.CANCELLED, 1.0),  # wrong task
                success(1),  # twice in one frame
            )
        )
    )
    assert accepted.outcomes == (success(1),)
    assert [(r.task_id, r.delivery_id, r.code) for r in accepted.refused] == [
        ("t2", "1700-2/0", p.NOT_HANDED),
        ("t9", "1700-9/1", p.NOT_HANDED),
        ("t-other", "1700-1/1", p.NOT_HANDED),
        ("t1", "1700-1/1", p.DUPLICATE_OUTCOME),
    ]
    assert (
        accepted.refused[1].message
        == "task t9 was not handed to this connection as delivery 1700-9/1"
    )
    assert ledger.leases() == [ref(2), ref(1)]
    again = ledger.accept(Outcomes((success(1),)))
    assert again.outcomes == () and again.refused[0].code == p.DUPLICATE_OUTCOME


def test_each_accepted_outcome_is_answered_once() -> None:
    ledger = greeted(3)
    ledger.window([task(1), task(2), task(3)], {"f1": "01\na"})
    accepted = ledger.accept(Outcomes((success(1), success(2), success(9))))
    answer = ledger.answer(["1700-1/1"], lost=["1700-2/1"], refused=accepted.refused)
    assert answer.delivery_ids == ("1700-1/1",)
    assert [(r.delivery_id, r.code) for r in answer.refused] == [
        ("1700-9/1", p.NOT_HANDED),
        ("1700-2/1", p.LEASE_LOST),
    ]
    assert "task t2 is no longer this agent's" in answer.refused[1].message
    assert ledger.leases() == [ref(3)]
    with pytest.raises(ValueError, match="delivery 1700-1/1 has no outcome being settled"):
        ledger.answer(["1700-1/1"])
    with pytest.raises(ValueError, match="delivery 1700-3/1 has no outcome being settled"):
        ledger.answer(lost=["1700-3/1"])
    assert p.decode_gateway_frame(p.encode(answer)) == answer


def test_hand_back_returns_only_deliveries_still_out() -> None:
    ledger = greeted(3)
    ledger.window([task(1), task(2), task(3)], {"f1": "01\na"})
    ledger.accept(Outcomes((success(3),)))
    returned, ignored = ledger.hand_back(
        HandBack((ref(1), ref(3), ref(7), DeliveryRef("t-other", ref(2).delivery_id)))
    )
    assert returned == [ref(1)]
    assert ignored == [ref(3), ref(7), DeliveryRef("t-other", ref(2).delivery_id)]
    assert ledger.leases() == [ref(2), ref(3)]
    assert ledger.credit == 0  # handing back returns no credit; the agent grants anew
    assert ledger.accept(Outcomes((success(1),))).refused[0].code == p.NOT_HANDED


def test_cancel_notices_reach_only_the_connection_running_the_task() -> None:
    ledger = greeted(2)
    ledger.window([task(1), task(2)], {"f1": "01\na"})
    ledger.accept(Outcomes((success(2),)))
    assert ledger.cancel(["t9", "t1", "t2", "t1"]) == Cancel(("t1",))
    assert ledger.cancel(["t2", "t9"]) is None
    assert greeted().cancel(["t1"]) is None


def test_deliveries_named_in_hello_are_adopted_without_credit() -> None:
    ledger = greeted()
    ledger.adopt([ref(1), ref(2)])
    assert (ledger.credit, ledger.handed, ledger.leases()) == (0, 2, [ref(1), ref(2)])
    assert ledger.accept(Outcomes((success(1),))).outcomes == (success(1),)
    assert ledger.cancel(["t2"]) == Cancel(("t2",))


# -- the agent's outbox ----------------------------------------------------------------


def test_outcomes_are_held_until_answered_and_forgotten_only_then() -> None:
    box = Outbox()
    box.add(success(1))
    box.add(FAILED)
    assert (len(box), box.unsent) == (2, 2)
    assert box.next_frame() == Outcomes((success(1), FAILED))
    assert box.next_frame() is None
    assert (len(box), box.unsent) == (2, 0)
    refusals = box.acknowledge(
        Settled(("1700-1/1", "unknown"), (Refusal("t2", "1700-2/3", p.LEASE_LOST, "gone"),))
    )
    assert refusals == [Refusal("t2", "1700-2/3", p.LEASE_LOST, "gone")]
    assert (len(box), box.bytes) == (0, 0)
    assert box.acknowledge(Settled((), (Refusal("t2", "1700-2/3", p.LEASE_LOST, "gone"),))) == []
    box.add(success(5))
    assert box.acknowledge(Settled((), (Refusal("t6", "1700-5/1", p.NOT_HANDED, "?"),))) == []
    assert len(box) == 1


def test_unanswered_outcomes_are_sent_again_after_a_reconnect_in_order() -> None:
    box = Outbox()
    for n in (1, 2, 3):
        box.add(success(n))
    assert box.next_frame() == Outcomes((success(1), success(2), success(3)))
    box.acknowledge(Settled(("1700-2/1",)))
    box.add(success(4))
    box.disconnected()  # connection lost before the other answers came
    assert box.refs() == (ref(1), ref(3), ref(4))
    assert box.next_frame() == Outcomes((success(1), success(3), success(4)))
    box.disconnected()
    box.disconnected()
    assert box.next_frame() == Outcomes((success(1), success(3), success(4)))


def test_outcomes_of_lost_tasks_are_returned_when_forgotten() -> None:
    box = Outbox()
    box.add(success(1))
    box.add(success(2))
    assert box.forget_lost(["t2", "t9"]) == [success(2)]
    assert box.refs() == (ref(1),)


def test_one_outcome_per_delivery() -> None:
    box = Outbox()
    box.add(success(1))
    with pytest.raises(ValueError, match="an outcome for delivery 1700-1/1 is already held"):
        box.add(success(1, result="11\n43"))
    assert box.next_frame() == Outcomes((success(1),))


def test_the_outbox_is_bounded_by_withholding_credit_never_by_dropping() -> None:
    box = Outbox(max_outcomes=4, max_bytes=2000)
    assert box.room(in_hand=1) == 3
    box.add(success(1))
    assert box.room(in_hand=3) == 0  # every slot is spoken for: no more credit
    box.add(success(2, result="11\n" + "x" * 2000))  # a task already in hand still has room
    assert box.bytes >= box.max_bytes
    assert box.room(in_hand=0) == 0  # past the byte bound: no credit at all
    box.add(success(3))  # ...and nothing is dropped
    assert len(box) == 3
    box.next_frame()
    box.acknowledge(Settled(("1700-2/1",)))
    assert box.room(in_hand=0) == 2
    with pytest.raises(ValueError, match="at least one outcome"):
        Outbox(max_outcomes=0)


def test_outcome_frames_are_split_to_fit_the_frame_limit() -> None:
    box = Outbox()
    big = [success(n, result="11\n" + "x" * 1500) for n in range(5)]
    for outcome in big:
        box.add(outcome)
    frames = []
    while (frame := box.next_frame(max_frame_bytes=4096)) is not None:
        frames.append(frame)
    assert [len(f.outcomes) for f in frames] == [2, 2, 1]
    assert [o for f in frames for o in f.outcomes] == big
    assert all(len(p.encode(f)) <= 4096 for f in frames)


# -- both sides together, on plain data -----------------------------------------------


def test_a_conversation_with_a_reconnect_loses_no_outcome() -> None:
    """Agent and gateway exchange encoded frames; the connection drops after the outcomes
    are sent and before they are answered; after the new hello they are sent again,
    adopted, settled and forgotten."""
    box = Outbox()
    gateway = Ledger()

    def to_gateway(frame: p.AgentFrame) -> p.AgentFrame:
        decoded = p.decode_agent_frame(p.encode(frame))
        gateway.admit(decoded)
        return decoded

    def to_agent(frame: p.GatewayFrame) -> p.GatewayFrame:
        return p.decode_gateway_frame(p.encode(frame))

    greeting = to_gateway(hello(held=box.refs()))
    assert isinstance(greeting, Hello)
    welcome = to_agent(Welcome(gateway.greet(greeting), "ep-1", 30_000, 5.0))
    assert isinstance(welcome, Welcome) and welcome.version == 1
    credit = to_gateway(Credit(box.room(in_hand=0) and 2))
    assert isinstance(credit, Credit)
    gateway.grant(credit)
    [window] = gateway.window([task(1), task(2)], {"f1": "01\na"})
    received = to_agent(window)
    assert isinstance(received, Tasks) and received.functions == (FunctionCode("f1", "01\na"),)
    for t in received.tasks:
        box.add(success(int(t.task_id[1:]), delivery=t.delivery_id))
    frame = box.next_frame()
    assert frame is not None
    sent = to_gateway(frame)
    assert isinstance(sent, Outcomes)
    gateway.accept(sent)  # ...and the connection drops before the settle is answered.

    box.disconnected()
    gateway = Ledger()  # a new connection, maybe to another copy
    greeting = to_gateway(hello(held=box.refs()))
    assert isinstance(greeting, Hello) and greeting.held == (ref(1), ref(2))
    gateway.greet(greeting)
    gateway.adopt(greeting.held)  # the gateway checked they are still this agent's
    frame = box.next_frame()
    assert frame is not None
    accepted = gateway.accept(p.decode_agent_frame(p.encode(frame)))  # type: ignore[arg-type]
    assert accepted.outcomes == (success(1), success(2)) and accepted.refused == ()
    answer = to_agent(gateway.answer([o.delivery_id for o in accepted.outcomes]))
    assert isinstance(answer, Settled)
    assert box.acknowledge(answer) == []
    assert len(box) == 0 and gateway.leases() == []
