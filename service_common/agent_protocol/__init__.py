"""The agent <-> gateway protocol as pure code: typed frames, their codec, and the rules.

Both ends import this package: the gateway (``ws_service``, route :data:`AGENT_PATH`) and the
endpoint agent; nothing in it does I/O. Modules::

    frames   constants, error codes, ProtocolError, the records and the frames (dataclasses)
    codec    encode; decode_agent_frame / decode_gateway_frame (strict: a bad frame is a
             ProtocolError naming the field, never another exception); negotiate; sizes
    ledger   Ledger: the gateway's view of one connection (credit, deliveries, code sent,
             outcomes answered), the rules below kept on plain data
    outbox   Outbox: the agent's outcomes until they are answered, re-sent after a reconnect

The agent protocol
==================

**Connect** to ``ws[s]://host:port/v1/endpoint`` with ``Authorization: Bearer <endpoint
credential>``; a bad credential is HTTP 401 and no WebSocket opens. Every frame is one
binary WebSocket message holding one msgpack map with a ``type`` and the fields below
(``?``: may be left out; ``[X]``: a list; strings are UTF-8, a lone surrogate sent as ``?``;
ids are 1-128 printable ASCII characters without spaces). A receiver ignores fields it does
not know, so a version may grow optional fields; anything else that changes is a new version.

*Records* inside frames::

    ref      {task_id, delivery_id}                     one handing of one task
    task     {task_id, delivery_id, attempt: int >= 1, function_id, payload: str,
              walltime_s: float > 0 | nil, result_strategies?: [str]}
    code     {function_id, code: str}                   a function's serialized code
    outcome  {task_id, delivery_id, state: "success"|"failed"|"cancelled",
              result?: str (success only, required), exception?: ExceptionRecord
              (failed only, required), stdout?: str, stderr?: str,
              started_at?: float, completed_at: float}  (Unix seconds)
    refusal  {task_id, delivery_id, code, message}

``result_strategies`` (left out when empty) are the strategy ids of :mod:`sdk.serialize`
a Globus Compute submit named as its ``result_serializers``: the agent serializes the result
with the first that can, and fails the task naming each one's reason when none can.

A *delivery id* is chosen by the gateway, is unique for each time a task is handed to an
agent (a redelivery after a lost lease gets a new one) and is opaque to the agent, which
only echoes it.

*Agent -> gateway*::

    hello     {versions: [int], agent: id, host, version, capacity: {engine, workers,
               max_concurrency, prefetch, accelerators: [str]}, running: [ref], held: [ref]}
    credit    {grant: int >= 1}                 the agent can take ``grant`` more tasks
    withdraw  {count: int >= 1}                 it no longer wants ``count`` of its credit
    outcomes  {outcomes: [outcome]}
    status    {workers, busy, queued, held: int >= 0, draining: bool}
    hand_back {tasks: [ref]}                    tasks it will not finish (drain)
    need_code {function_ids: [id]}              code it no longer keeps

*Gateway -> agent*::

    welcome   {version: int, endpoint_id: id, lease_ms: int, heartbeat_s: float,
               walltime_s: float | nil, allowed_strategies: [str] | nil,
               max_frame_bytes: int, lost: [task_id]}
    tasks     {functions: [code], tasks: [task]}        a window
    withdrawn {count: int >= 0}                         credit taken back by a withdraw
    functions {functions: [code], missing: [function_id]}
    settled   {delivery_ids: [id], refused: [refusal]}
    cancel    {task_ids: [id]}
    drain     {grace_s: float | nil}
    error     {code, message}

**Order.** The agent's first frame is ``hello``, once: ``versions`` lists every version it
speaks, ``agent`` names it (the same across its reconnects). The gateway answers ``welcome``
with the highest version both speak (or ``error`` ``UNSUPPORTED_VERSION``, then closes);
nothing else comes first from either side. ``running`` and ``held`` name the tasks the agent
still runs and the outcomes it still holds from an earlier connection: the gateway keeps
those whose lease it still holds (it renews them from now on) and lists the others in
``welcome.lost``; the agent stops those and forgets their outcomes, logging each one (they
are another agent's now, or, for a held outcome whose ``settled`` answer was lost with the
connection, already stored). The agent's id is its consumer in the endpoint's group: one
id per agent process, never shared by two live agents.

**Credit.** ``credit`` frames add up; each task sent uses one. The gateway never sends more
tasks than the credit left (:class:`Ledger`), and outstanding credit is at most
:data:`CREDIT_MAX` (more is ``CREDIT_OVERFLOW``). Credit lives and dies with the connection,
and a hand-back returns none: the agent grants again what it can take.
An agent whose wanted credit fell (its tasks turned long, so its look-ahead shrank) sends
``withdraw``: the gateway lowers the outstanding credit by ``count`` or by what is left
unused, whichever is less (credit a read in flight has reserved counts as used: those
tasks are coming), and answers ``withdrawn`` with the amount taken back. The answer
follows, in frame order, every ``tasks`` frame that used credit before the withdraw was
handled, so the agent's own count (granted - tasks received - withdrawn) stays exact when
it applies frames in order; a second ``withdraw`` before the answer is allowed, though an
agent has no need of one. The frames are optional within version 1: an agent that never
sends ``withdraw`` never sees ``withdrawn`` (the agent and gateway of this code base are
released together; a gateway older than the frame refuses it as ``BAD_FRAME``).
A ``tasks`` frame with no tasks is the gateway's word that a read for the agent's credit
found the endpoint's stream empty: sent at most once per grant, never while tasks for it
are being started, so it never overtakes a window. The agent may rely on it to know that
nothing is queued (a burst run ends on it); an agent that does not care ignores it.

**Code once.** A ``tasks`` frame carries the code of every function its tasks name that was
not sent earlier on this connection; no task arrives before its function's code. An agent
that evicted a function's code asks again with ``need_code``; the answer is a
``functions`` frame (``missing``: no code is stored; the agent fails those tasks with
``FunctionNotFound``). Tasks whose function is not allowed on the endpoint, whose code is
missing, whose ``walltime_s`` does not parse, or whose attempt passes ``max_attempts`` are
settled by the gateway (``FunctionNotAllowed``, ``FunctionNotFound``,
``DeserializationError``, ``WorkerLost``) and never sent; so is a task already terminal
(cancelled while queued), which is only acknowledged.

**Outcomes are answered exactly once per connection.** Every outcome sent is named once
in a later ``settled`` frame: in ``delivery_ids`` once it is stored (state, result and
completion notice written, lease released), or in ``refused`` (:data:`NOT_HANDED`: that
delivery was not handed to this connection; :data:`DUPLICATE_OUTCOME`; :data:`LEASE_LOST`:
the task is no longer this agent's). Either way the agent forgets it then, and only then
(:class:`Outbox`). An outcome not yet answered when the connection drops is sent again
after the next ``hello``, which names it in ``held``; the gateway's settle writes a task's
outcome only while it is ``running`` under that delivery's attempt, so a repeat is
harmless. While Redis is away the gateway sends ``error`` ``UNAVAILABLE``, stops sending
windows and keeps retrying; outcomes wait unanswered.

**Cancel and drain.** ``cancel`` names tasks handed to this connection whose owner
cancelled them; the agent stops those it still runs and reports them ``cancelled`` (an id
it does not hold is ignored). ``drain`` says this gateway copy is going away: the agent
grants no more credit on the connection, closes it (1001) and reconnects, to another copy
when it knows one, naming what it still runs and holds in its ``hello`` so the next
gateway keeps those tasks (``grace_s`` is advisory; the agent does not stop). The agent's
own stop grants no more credit, sends ``hand_back`` for tasks it has not started, gives
running ones its ``drain_grace_s``, hands back what is still running, waits for its
outcomes to be answered and closes (1000). A task handed back is queued again at once, its
attempt not counted.

**Status** is sent after ``welcome`` and every ``welcome.heartbeat_s``: ``workers`` alive,
``busy`` tasks executing, ``queued`` tasks received and waiting for a slot, ``held``
outcomes not yet answered. The gateway records it for ``GET /v1/endpoints/{id}/status``.

**Errors and refusals** carry one of these codes (constants of this package); after a fatal
one the sender closes the connection with the WebSocket code shown, the agent reconnects
with capped backoff and says ``hello`` again, so both sides start from a clean state::

    BAD_FRAME            not one msgpack map of a known type with well-formed fields  1002
    UNSUPPORTED_VERSION  hello offers no version the gateway speaks                    1002
    UNEXPECTED_FRAME     a frame before hello, or a second hello                       1002
    CREDIT_OVERFLOW      outstanding credit would pass CREDIT_MAX                      1008
    INTERNAL             the gateway failed on its own side                            1011
    UNAVAILABLE          the gateway cannot reach Redis; it retries          (stays open)
    NOT_HANDED           refusal: not handed to this connection as that delivery
    DUPLICATE_OUTCOME    refusal: an outcome for that delivery is already settling
    LEASE_LOST           refusal: the task is no longer this agent's; nothing written

**Held outcomes are bounded by credit, never dropped.** The agent holds each outcome until
it is answered, across reconnects, up to ``max_outcomes`` and ``max_bytes``
(:class:`Outbox`). It grants credit only while every task it holds or has credit for still
has room there, and none at all past ``max_bytes``; so a long disconnection stops the agent
taking work, never makes it discard a result. Outcomes are forgotten only when answered,
or when a welcome says their task is ``lost`` (logged).

**Size.** A frame is at most ``max_frame_bytes`` (:data:`FRAME_BYTES_MAX` unless the welcome
says less) and lists at most :data:`ITEMS_PER_FRAME_MAX` items; senders split batches to fit.
"""

from service_common.agent_protocol.codec import (
    decode_agent_frame,
    decode_gateway_frame,
    encode,
    negotiate,
)
from service_common.agent_protocol.frames import (
    AGENT_PATH,
    BAD_FRAME,
    CLOSE_CODES,
    CREDIT_MAX,
    CREDIT_OVERFLOW,
    DUPLICATE_OUTCOME,
    FATAL_CODES,
    FRAME_BYTES_MAX,
    INTERNAL,
    ITEMS_PER_FRAME_MAX,
    LEASE_LOST,
    NOT_HANDED,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    UNAVAILABLE,
    UNEXPECTED_FRAME,
    UNSUPPORTED_VERSION,
    AgentFrame,
    Cancel,
    Capacity,
    Credit,
    DeliveryRef,
    Drain,
    Error,
    Frame,
    FunctionCode,
    Functions,
    GatewayFrame,
    HandBack,
    Hello,
    NeedCode,
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
)
from service_common.agent_protocol.ledger import Accepted, Ledger
from service_common.agent_protocol.outbox import Outbox

__all__ = [
    "AGENT_PATH",
    "BAD_FRAME",
    "CLOSE_CODES",
    "CREDIT_MAX",
    "CREDIT_OVERFLOW",
    "DUPLICATE_OUTCOME",
    "FATAL_CODES",
    "FRAME_BYTES_MAX",
    "INTERNAL",
    "ITEMS_PER_FRAME_MAX",
    "LEASE_LOST",
    "NOT_HANDED",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "UNAVAILABLE",
    "UNEXPECTED_FRAME",
    "UNSUPPORTED_VERSION",
    "Accepted",
    "AgentFrame",
    "Cancel",
    "Capacity",
    "Credit",
    "DeliveryRef",
    "Drain",
    "Error",
    "Frame",
    "FunctionCode",
    "Functions",
    "GatewayFrame",
    "HandBack",
    "Hello",
    "Ledger",
    "NeedCode",
    "Outbox",
    "Outcomes",
    "ProtocolError",
    "Refusal",
    "Settled",
    "Status",
    "Task",
    "TaskOutcome",
    "Tasks",
    "Welcome",
    "Withdraw",
    "Withdrawn",
    "decode_agent_frame",
    "decode_gateway_frame",
    "encode",
    "negotiate",
]
