"""The pure WebSocket protocol: client frames in, commands or error frames out; notices and
task hashes in, results frames out."""

from __future__ import annotations

import json

import pytest

from sdk import wire
from sdk.messages import ResultItem, exception_record
from sdk.serialize import deserialize, serialize
from ws_service import protocol
from ws_service.protocol import Notice, Subscribe, Unsubscribe

GID = "0b6f3c1e-2a4d-4c1b-9e55-6f0d2d7b8a11"


def test_subscribe_frame_parses_to_a_command() -> None:
    frame = json.dumps({"type": "subscribe", "task_group_id": GID, "cursor": "1700-3"})
    assert protocol.parse_frame(frame) == Subscribe(GID, "1700-3")


def test_subscribe_without_cursor_starts_from_the_beginning() -> None:
    frame = json.dumps({"type": "subscribe", "task_group_id": GID})
    assert protocol.parse_frame(frame) == Subscribe(GID, "0")


def test_unsubscribe_frame_parses_to_a_command() -> None:
    frame = json.dumps({"type": "unsubscribe", "task_group_id": GID})
    assert protocol.parse_frame(frame) == Unsubscribe(GID)


def test_binary_frames_are_accepted_as_utf8() -> None:
    frame = json.dumps({"type": "unsubscribe", "task_group_id": GID}).encode()
    assert protocol.parse_frame(frame) == Unsubscribe(GID)


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        ("not json", "not valid JSON"),
        (b"\xff\xfe", "UTF-8"),
        ("[1, 2]", "JSON object"),
        ('"subscribe"', "JSON object"),
        ("{}", "unknown frame type"),
        ('{"type": "publish", "task_group_id": "g"}', "unknown frame type"),
        ('{"type": "subscribe"}', "task_group_id"),
        ('{"type": "subscribe", "task_group_id": 7}', "task_group_id"),
        ('{"type": "subscribe", "task_group_id": ""}', "task_group_id"),
        ('{"type": "subscribe", "task_group_id": "../whoami"}', "task_group_id"),
        ('{"type": "subscribe", "task_group_id": "a{b}c"}', "task_group_id"),
        ('{"type": "unsubscribe", "task_group_id": "' + "a" * 129 + '"}', "task_group_id"),
        ('{"type": "subscribe", "task_group_id": "g", "cursor": 0}', "cursor"),
        ('{"type": "subscribe", "task_group_id": "g", "cursor": "$"}', "cursor"),
        ('{"type": "subscribe", "task_group_id": "g", "cursor": "1-2-3"}', "cursor"),
        ('{"type": "subscribe", "task_group_id": "g", "cursor": "-1"}', "cursor"),
    ],
)
def test_malformed_frames_give_a_bad_frame_error(frame: str | bytes, fragment: str) -> None:
    answer = protocol.parse_frame(frame)
    assert isinstance(answer, dict)
    assert answer["type"] == "error"
    assert answer["code"] == wire.BAD_FRAME
    assert fragment in answer["message"]


def test_a_bad_cursor_error_names_the_group() -> None:
    answer = protocol.parse_frame('{"type": "subscribe", "task_group_id": "g1", "cursor": "x"}')
    assert isinstance(answer, dict)
    assert (answer["code"], answer.get("task_group_id")) == (wire.BAD_FRAME, "g1")


def test_subscribed_frame_echoes_group_and_cursor() -> None:
    assert protocol.subscribed_frame(Subscribe(GID, "5-0")) == {
        "type": "subscribed",
        "task_group_id": GID,
        "cursor": "5-0",
    }


def test_notices_keep_stream_order_and_skip_entries_without_a_task_id() -> None:
    entries = [
        ("1-0", {"task_id": "a", "state": "success"}),
        ("2-0", {"state": "success"}),
        ("3-0", {"task_id": "b"}),
    ]
    assert protocol.parse_notices(entries) == [
        Notice("1-0", "a", "success"),
        Notice("3-0", "b", ""),
    ]


def test_a_notice_that_carries_its_outcome_needs_no_task_hash() -> None:
    exception = '{"type": "ValueError"}'
    entries = [
        ("1-0", {"task_id": "a", "state": "success", "inline": "1", "result": "11\n1"}),
        ("2-0", {"task_id": "b", "state": "failed", "inline": "1", "exception": exception}),
        ("3-0", {"task_id": "c", "state": "success"}),
        ("4-0", {"task_id": "d", "inline": "1", "result": "11\n1"}),  # no state: not trusted
    ]
    a, b, c, d = protocol.parse_notices(entries)
    assert a == Notice("1-0", "a", "success", {"result": "11\n1"})
    assert [protocol.needs_task_hash(n) for n in (a, b, c, d)] == [False, False, True, True]
    # The task hash, even a missing one, is not looked at for an inline notice.
    items = protocol.result_items([a, b], {})
    assert items[0] == {"task_id": "a", "state": "success", "cursor": "1-0", "result": "11\n1"}
    assert (items[1]["state"], items[1]["exception"]["type"]) == ("failed", "ValueError")


def test_a_success_item_carries_the_result_buffer() -> None:
    buffer = serialize({"answer": 42})
    item = protocol.result_item(
        Notice("7-1", "t1", "success"), {"task_id": "t1", "state": "success", "result": buffer}
    )
    assert item == {"task_id": "t1", "state": "success", "cursor": "7-1", "result": buffer}
    assert deserialize(item["result"]) == {"answer": 42}


def test_a_failed_item_carries_the_exception_record() -> None:
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError as exc:
        record = exception_record(exc)
    item = protocol.result_item(
        Notice("8-0", "t2", "failed"),
        {"task_id": "t2", "state": "failed", "exception": json.dumps(record)},
    )
    assert item == {"task_id": "t2", "state": "failed", "cursor": "8-0", "exception": record}


def test_an_item_carries_the_exception_pickle_and_what_the_task_printed() -> None:
    record = exception_record(KeyError("k"))
    assert record["pickled"].startswith("00\n")
    item = protocol.result_item(
        Notice("8-1", "t6", "failed"),
        {"state": "failed", "exception": json.dumps(record), "stdout": "out\n", "stderr": "e"},
    )
    assert item["exception"]["pickled"] == record["pickled"]
    assert (item.get("stdout"), item.get("stderr")) == ("out\n", "e")
    quiet = protocol.result_item(Notice("8-2", "t7", "success"), {"result": "11\n1"})
    assert "stdout" not in quiet and "stderr" not in quiet


def test_the_hash_state_fills_a_notice_without_one() -> None:
    item = protocol.result_item(Notice("9-0", "t3", ""), {"state": "cancelled"})
    assert item == {"task_id": "t3", "state": "cancelled", "cursor": "9-0"}


def test_an_expired_task_hash_gives_a_failed_item_saying_so() -> None:
    item = protocol.result_item(Notice("9-0", "t4", "success"), {})
    assert item["state"] == "failed"
    assert "result" not in item
    assert item["exception"]["type"] == "ResultExpired"
    assert "t4" in item["exception"]["message"]


def test_a_corrupt_exception_record_is_reported_not_raised() -> None:
    item = protocol.result_item(Notice("9-0", "t5", "failed"), {"exception": "{not json"})
    assert item["exception"]["type"] == "CorruptException"


def test_result_items_pair_notices_with_hashes() -> None:
    notices = [Notice("1-0", "a", "success"), Notice("2-0", "b", "success")]
    items = protocol.result_items(notices, {"b": {"result": "11\n2"}, "a": {"result": "11\n1"}})
    assert [(i["task_id"], i["result"]) for i in items] == [("a", "11\n1"), ("b", "11\n2")]
    expired = protocol.result_items(notices, {"a": {"result": "11\n1"}})[1]
    assert (expired["task_id"], expired["state"]) == ("b", "failed")
    assert expired["exception"]["type"] == "ResultExpired"


def _items(count: int, result_chars: int) -> list[ResultItem]:
    return [
        {
            "task_id": f"t{i}",
            "state": "success",
            "cursor": f"{1000 + i}-0",
            "result": "11\n" + "x" * result_chars,
        }
        for i in range(count)
    ]


def test_all_items_of_a_read_go_in_one_frame() -> None:
    items = _items(50, 10)
    frames = protocol.results_frames(GID, items, max_frame_bytes=1024 * 1024)
    assert len(frames) == 1
    frame = json.loads(frames[0])
    assert frame == {
        "type": "results",
        "task_group_id": GID,
        "cursor": "1049-0",
        "results": items,
    }


def test_frames_are_split_to_stay_under_the_frame_limit_in_order() -> None:
    items = _items(10, 1000)
    limit = 3500
    frames = protocol.results_frames(GID, items, max_frame_bytes=limit)
    assert 1 < len(frames) < len(items)
    decoded = [json.loads(f) for f in frames]
    assert all(len(f) <= limit for f in frames)
    assert [r for f in decoded for r in f["results"]] == items
    assert all(f["cursor"] == f["results"][-1]["cursor"] for f in decoded)


def test_an_item_larger_than_the_limit_still_gets_a_frame_of_its_own() -> None:
    items = _items(3, 5000)
    frames = protocol.results_frames(GID, items, max_frame_bytes=100)
    assert [len(json.loads(f)["results"]) for f in frames] == [1, 1, 1]


def test_no_items_no_frames() -> None:
    assert protocol.results_frames(GID, [], max_frame_bytes=100) == []


def test_encoded_error_frames_are_json() -> None:
    frame = protocol.error_frame(wire.NOT_FOUND, "no such group", GID)
    assert json.loads(protocol.encode(frame)) == {
        "type": "error",
        "code": "NOT_FOUND",
        "message": "no such group",
        "task_group_id": GID,
    }
