"""An in-process Flower Grid: the ServerApp's messages go to each hospital's ClientApp and back
as serialised protobuf bytes (Flower's own wire format), so nothing but bytes crosses between
server and hospitals, and every byte is counted. No Ray, no sockets: a federation of 3 hospitals
runs in one process on 2 CPU cores. ``drop`` takes a hospital offline (fault injection)."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=E0611
from flwr.serverapp.grid import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity


def _wire(msg: Message) -> tuple[Message, int]:
    raw = message_to_proto(msg).SerializeToString()
    proto = ProtoMessage()
    proto.ParseFromString(raw)
    return message_from_proto(proto), len(raw)


class LocalGrid(Grid):
    def __init__(self, client_app, node_ids: list[int], hospitals: list[int], run_id: int = 1,
                 on_reply: Callable[[Message], None] | None = None):
        self.client_app, self.node_ids = client_app, list(node_ids)
        # Flower stamps messages with the identity of the process's task (set as its simulation does)
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID
        self.contexts = {n: Context(run_id=run_id, node_id=n, node_config={"hospital": h}, state=RecordDict(),
                                    run_config={}) for n, h in zip(self.node_ids, hospitals)}
        self._run: Run = Run.create_empty(run_id)
        self._replies: dict[str, Message] = {}
        self.dropped: set[int] = set()
        self.bytes_to_hospitals = self.bytes_to_server = self.messages = 0
        self.on_reply = on_reply  # tests: see exactly what the server receives

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.node_ids if n not in self.dropped]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            msg.metadata.__dict__["_run_id"] = self._run.run_id if self._run else 1
            dst = msg.metadata.dst_node_id
            ids.append(msg.metadata.message_id)
            if dst in self.dropped:
                continue  # an offline hospital never answers
            received, n = _wire(msg)
            self.bytes_to_hospitals += n
            self.messages += 1
            try:
                reply = self.client_app(message=received, context=self.contexts[dst])
            except Exception as e:  # as a SuperNode does: the hospital answers with an error, the run goes on
                reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(e).__name__}: {e}"),
                                reply_to=received)
            answer, n = _wire(reply)
            self.bytes_to_server += n
            if self.on_reply:
                self.on_reply(answer)
            self._replies[msg.metadata.message_id] = answer
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


class PromptGrid(Grid):
    """The SuperLink's grid (process mode) with replies collected every ``interval`` seconds instead of
    Flower's 3: each SecAgg+ stage waits for its replies, and a first pull right after the push is always
    empty, so Flower's loop cost at least 3 s per stage (a round here: 30.4 -> about 25 s, docs/FEDERATED.md).
    The timeout, the messages and what is returned are Flower's."""

    def __init__(self, inner: Grid, interval: float = 0.25):
        self.inner, self.interval = inner, interval

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        waiting = set(self.push_messages(messages))
        end = time.monotonic() + (timeout or 0.0)
        replies: list[Message] = []
        while waiting:
            got = list(self.pull_messages(waiting))
            replies += got
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if not waiting or timeout is not None and time.monotonic() >= end:
                break
            time.sleep(self.interval)
        return replies
