"""One engine server at a time, shared by the test modules that ask for the same launch options.

Each start of `sglang serve` or `vllm serve` imports the engine in several processes, tens of CPU
seconds on the 2-core CI machine, so modules that would start identical servers get the same one.
Asking for other options stops the server held first: at most one shared server's memory is held at
a time, as with a module-scoped fixture. Modules run in file order, so two modules share a server
when no module between them asks for another; sharing only saves time, each module's tests run on
a server started with exactly the options it asked for either way.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar


class Stoppable(Protocol):
    def stop(self) -> None: ...


S = TypeVar("S", bound=Stoppable)


class SharedServer(Generic[S]):
    """`get(*options)` returns the running server for `options`, starting it with `start(*options)` if needed."""

    def __init__(self, start: Callable[..., S]):
        self._start = start
        self._options: tuple[Hashable, ...] | None = None
        self._server: S | None = None

    def get(self, *options: Hashable) -> S:
        if self._server is None or options != self._options:
            self.close()
            self._server, self._options = self._start(*options), options
        return self._server

    def close(self) -> None:
        server, self._server, self._options = self._server, None, None
        if server is not None:
            server.stop()
