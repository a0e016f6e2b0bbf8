from sdk.keys import AGENT_GROUP, Keys


def test_key_strings_are_pinned() -> None:
    k = Keys()
    assert k.endpoint_tasks("e1") == "fx:{ep:e1}:tasks"
    assert k.endpoint_status("e1") == "fx:{ep:e1}:status"
    assert k.endpoint_cancel("e1") == "fx:{ep:e1}:cancel"
    assert k.endpoint_cancel_pattern() == "fx:{ep:*}:cancel"
    assert Keys("a*b").endpoint_cancel_pattern() == "a\\*b:{ep:*}:cancel"
    assert k.task("t1") == "fx:{task:t1}"
    assert k.function_code("f1") == "fx:{fn:f1}:code"
    assert k.task_group_results("g1") == "fx:{tg:g1}:results"
    assert k.task_group_tasks("g1") == "fx:{tg:g1}:tasks"
    assert k.idempotency("u1", "abc") == "fx:{idem:u1}:abc"
    assert k.dashboard_session("h1") == "fx:dashboard:session:h1"
    assert k.dashboard_code("h2") == "fx:dashboard:code:h2"
    assert k.pattern() == "fx:*"
    assert AGENT_GROUP == "agents"


def test_prefix_is_applied_everywhere() -> None:
    k = Keys("test-42")
    assert k.task("t") == "test-42:{task:t}"
    assert k.endpoint_tasks("e").startswith("test-42:")
