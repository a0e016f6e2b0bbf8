"""The AMQP records' Redis keys, pinned: a group's keys share its results stream's hash tag."""

from __future__ import annotations

from sdk.keys import Keys
from service_common.amqp import AmqpKeys, ledger_name, queue_name


def test_the_keys_and_names_are_pinned() -> None:
    keys = AmqpKeys("fx")
    assert keys.groups() == "fx:amqp:groups"
    assert keys.cursor("g1") == "fx:{tg:g1}:amqp_cursor"
    assert keys.lease("g1") == "fx:{tg:g1}:amqp_lease"
    assert Keys("fx").task_group_results("g1") == "fx:{tg:g1}:results"
    assert queue_name("g1") == "fxbroker.results.g1"
    assert ledger_name("g1") == "fxbroker.ledger.g1"
