"""Fan-out of supervisor events to every consumer, never waiting on any of them.

The supervisor must not slow down because a consumer is slow: :meth:`EventBus.publish`
only ever uses ``send_nowait``.  Local sinks (terminal, JSON lines) subscribe with an
unbounded buffer, since dropping their lines would lose information; a remote consumer
subscribes with a bounded one and is cut off when it falls that far behind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import trio

from ._events import Event


@dataclass(eq=False, slots=True)
class Subscription:
    """One consumer's stream of events; ``overflowed`` says why it ended, if it did."""

    events: trio.MemoryReceiveChannel[Event]
    _send: trio.MemorySendChannel[Event] = field(repr=False)
    overflowed: bool = False


class EventBus:
    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        self._closed = False

    def subscribe(self, max_buffer: float = math.inf) -> Subscription:
        send, receive = trio.open_memory_channel[Event](max_buffer)
        subscription = Subscription(receive, send)
        if self._closed:
            send.close()
        else:
            self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
        subscription._send.close()  # pyright: ignore[reportPrivateUsage]

    def publish(self, event: Event) -> None:
        for subscription in list(self._subscriptions):
            try:
                subscription._send.send_nowait(event)  # pyright: ignore[reportPrivateUsage]
            except trio.WouldBlock:
                subscription.overflowed = True
                self.unsubscribe(subscription)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.unsubscribe(subscription)

    def close(self) -> None:
        """End every subscription once its buffered events are consumed."""
        self._closed = True
        for subscription in list(self._subscriptions):
            self.unsubscribe(subscription)
