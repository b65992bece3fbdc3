"""Handles on submitted flow runs, bound to the client that made them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

from fleetflow._info import FlowRunInfo
from fleetflow.events import FlowEvent

if TYPE_CHECKING:
    from fleetflow._async_client import AsyncClient
    from fleetflow._client import Client

__all__ = ["AsyncFlowRunHandle", "FlowRunHandle"]

R = TypeVar("R")


class AsyncFlowRunHandle(Generic[R]):
    """A submitted flow run, bound to the :class:`AsyncClient` that made it.

    Attributes:
        id: The flow run id.
        created: False when an idempotency key matched an existing flow run.
    """

    def __init__(self, client: AsyncClient, flow_run_id: str, created: bool = True) -> None:
        self._client = client
        self.id = flow_run_id
        self.created = created

    def __repr__(self) -> str:
        return f"<AsyncFlowRunHandle {self.id}>"

    async def get(self) -> FlowRunInfo:
        """Fetch the flow run's current state and counts; see :meth:`AsyncClient.get`."""
        return await self._client.get(self.id)

    async def wait(self, timeout: float | None = None) -> str:
        """Wait until the flow run ends; see :meth:`AsyncClient.wait`."""
        return await self._client.wait(self.id, timeout=timeout)

    async def result(self, timeout: float | None = None, *, fetch: bool = True) -> R:
        """Wait until the flow run ends and return its result; see :meth:`AsyncClient.result`."""
        return await self._client.result(self.id, timeout=timeout, fetch=fetch)

    async def cancel(self) -> int:
        """Cancel this flow run; returns how many task runs were cancelled."""
        return await self._client.cancel(self.id)

    def events(self, after_seq: int = 0) -> AsyncIterator[FlowEvent]:
        """Iterate over the flow run's events; see :meth:`AsyncClient.watch`."""
        return self._client.watch(self.id, after_seq=after_seq)


class FlowRunHandle(Generic[R]):
    """A submitted flow run, bound to the :class:`Client` that made it.

    The same methods as :class:`AsyncFlowRunHandle`, blocking.

    Attributes:
        id: The flow run id.
        created: False when an idempotency key matched an existing flow run.
    """

    def __init__(self, client: Client, flow_run_id: str, created: bool = True) -> None:
        self._client = client
        self.id = flow_run_id
        self.created = created

    def __repr__(self) -> str:
        return f"<FlowRunHandle {self.id}>"

    def get(self) -> FlowRunInfo:
        """Fetch the flow run's current state and counts; see :meth:`Client.get`."""
        return self._client.get(self.id)

    def wait(self, timeout: float | None = None) -> str:
        """Block until the flow run ends; see :meth:`Client.wait`."""
        return self._client.wait(self.id, timeout=timeout)

    def result(self, timeout: float | None = None, *, fetch: bool = True) -> R:
        """Block until the flow run ends and return its result; see :meth:`Client.result`."""
        return self._client.result(self.id, timeout=timeout, fetch=fetch)

    def cancel(self) -> int:
        """Cancel this flow run; returns how many task runs were cancelled."""
        return self._client.cancel(self.id)

    def events(self, after_seq: int = 0) -> Iterator[FlowEvent]:
        """Iterate over the flow run's events; see :meth:`Client.watch`."""
        return self._client.watch(self.id, after_seq=after_seq)
