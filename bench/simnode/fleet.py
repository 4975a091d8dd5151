"""Many simulated nodes in one process: one uvicorn server over many pre-bound sockets.

    async with SimFleet(count=300, seconds=2.0) as fleet:
        run_benchmark(fleet.urls)

Each node listens on its own port (``base_port``, ``base_port + 1``, … or free ports) and the
one ASGI app picks the node by the local port. Idle nodes cost nothing: no polling loop, no
server-side websocket pings (ComfyUI sends none either), no per-node task until a prompt comes.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Self

import uvicorn

from bench.simnode.app import build_app
from bench.simnode.node import SimNode, SimNodeConfig

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 3.0
KEEP_ALIVE_S = 75.0
"""Idle keep-alive connections stay open as long as aiohttp (ComfyUI's server) keeps them."""


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: a free port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class SimFleet:
    """``count`` simulated nodes (or one per entry of ``configs``), served while the context is
    open. ``seconds``, ``speeds`` (one per node: a heterogeneous fleet), ``previews`` and
    ``models`` (folder → files; default the tiny local checkpoints) build the configs when
    ``configs`` is not given (see `SimNodeConfig`)."""

    def __init__(
        self,
        count: int = 1,
        *,
        host: str = "127.0.0.1",
        base_port: int | None = None,
        seconds: float = 1.0,
        speeds: Sequence[float] | None = None,
        previews: bool = True,
        models: Mapping[str, Sequence[str]] | None = None,
        configs: Sequence[SimNodeConfig] | None = None,
    ) -> None:
        if configs is None:
            speeds = list(speeds) if speeds is not None else [1.0] * count
            if len(speeds) != count:
                raise ValueError(f"{len(speeds)} speeds for {count} nodes")
            extra = {} if models is None else {"models": models}
            configs = [
                SimNodeConfig(seconds=seconds, speed=speed, previews=previews, **extra)
                for speed in speeds
            ]
        self.configs = list(configs)
        self.host = host
        self.base_port = base_port
        self.nodes: list[SimNode] = []
        self._sockets: list[socket.socket] = []
        self._server: uvicorn.Server | None = None

    def __repr__(self) -> str:
        return f"SimFleet({len(self.configs)} nodes on {self.host})"

    @property
    def urls(self) -> list[str]:
        """The nodes' base URLs, in order."""
        return [node.url for node in self.nodes]

    async def start(self) -> None:
        """Bind every port, then serve them all from one uvicorn server."""
        try:
            for index in range(len(self.configs)):
                port = 0 if self.base_port is None else self.base_port + index
                self._sockets.append(bind(self.host, port))
        except OSError:
            self._close_sockets()
            raise
        by_port: dict[int, SimNode] = {}
        for config, sock in zip(self.configs, self._sockets, strict=True):
            port = sock.getsockname()[1]
            node = by_port[port] = SimNode(config, f"http://{self.host}:{port}")
            self.nodes.append(node)
        config = uvicorn.Config(
            build_app(by_port),
            lifespan="off",
            log_level="warning",
            access_log=False,
            ws_ping_interval=None,
            ws_max_size=2**26,
            timeout_keep_alive=KEEP_ALIVE_S,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        )
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        try:
            await server.startup(sockets=self._sockets)
        except BaseException:
            self._close_sockets()
            raise
        self._server = server
        logger.info("%d simulated ComfyUI nodes on %s", len(self.nodes), self.host)

    async def stop(self) -> None:
        """Drop running work, close the sockets and connections."""
        for node in self.nodes:
            await node.close()
        if self._server is not None:
            server, self._server = self._server, None
            server.should_exit = True
            await server.shutdown(sockets=self._sockets)
        self._close_sockets()

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


__all__ = ["SimFleet", "bind"]
