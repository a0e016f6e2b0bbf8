"""The AMQP records' Redis keys, pinned: a group's keys share its results stream's hash tag."""

from __future__ import annotations

from sdk.keys import Keys
from service_common.amqp import ledger_name, queue_name


def test_the_keys_and_names_are_pinned() -> None:
    keys = Keys("fx")
    assert keys.amqp_groups() == "fx:amqp:groups"
    assert keys.amqp_cursor("g1") == "fx:{tg:g1}:amqp_cursor"
    assert keys.amqp_lease("g1") == "fx:{tg:g1}:amqp_lease"
    assert Keys("fx").task_group_results("g1") == "fx:{tg:g1}:results"
    assert queue_name("g1") == "fxbroker.results.g1"
    assert ledger_name("g1") == "fxbroker.ledger.g1"
