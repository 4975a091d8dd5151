"""Hosts played by Linux network namespaces, for tests of the multi-host layout (root, iproute2).

`NetnsLab(prefix, count)` builds namespaces `<prefix>-1` … `<prefix>-N`, each joined to the
test's own (root) namespace by a veth pair on a private /30: host i is `10.77.i.2`, and the
root side of its link is `10.77.i.1`, the address the control plane is reached at from that
host. A namespace has no default route, so a process inside can reach its own addresses and
the control plane's side of its link, nothing else. The root namespace gets one `unreachable`
route for the whole 10.77.0.0/16: a link that is cut (`cut(i)`) drops its connected route, and
without that route the kernel would send the host's traffic out of the machine's default
gateway instead of failing it.

`TcpForwarder` makes a service that listens on the root namespace's loopback (Prefect server,
MariaDB) answer on a link address too, the way a control-plane host would listen on its LAN
address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

SUPERNET = ipaddress.ip_network("10.77.0.0/16")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip …`; a failure (with check) raises with its stderr."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


@dataclass
class NetnsLab:
    """N namespaces on veth links to the root namespace; `create()`, then `destroy()`."""

    prefix: str  # short: link names are `<prefix><i>-r` and must fit 15 characters
    count: int
    created: list[str] = field(default_factory=list)

    def ns(self, i: int) -> str:
        return f"{self.prefix}-{i}"

    def host_address(self, i: int) -> str:
        """The address of host i inside its namespace."""
        return f"10.77.{i}.2"

    def gateway_address(self, i: int) -> str:
        """The root namespace's end of host i's link (the control plane, as host i sees it)."""
        return f"10.77.{i}.1"

    def root_link(self, i: int) -> str:
        return f"{self.prefix}{i}-r"

    def exec_prefix(self, i: int) -> list[str]:
        """Prepend to a command line to run it on host i."""
        return ["ip", "netns", "exec", self.ns(i)]

    def create(self) -> None:
        self.remove_stale(self.prefix)
        taken = ip("-4", "route", "show", "table", "all").stdout
        clash = [line for line in taken.splitlines() if _in_supernet(line)]
        if clash:
            raise RuntimeError(f"{SUPERNET} is already routed here: {clash}")
        ip("route", "add", "unreachable", str(SUPERNET), "metric", "4242")
        for i in range(1, self.count + 1):
            ns, root, inner = self.ns(i), self.root_link(i), f"{self.prefix}{i}-n"
            ip("netns", "add", ns)
            self.created.append(ns)
            ip("link", "add", root, "type", "veth", "peer", "name", inner)
            ip("link", "set", inner, "netns", ns)
            ip("addr", "add", f"{self.gateway_address(i)}/30", "dev", root)
            ip("link", "set", root, "up")
            ip("-n", ns, "addr", "add", f"{self.host_address(i)}/30", "dev", inner)
            ip("-n", ns, "link", "set", inner, "up")
            ip("-n", ns, "link", "set", "lo", "up")

    def cut(self, i: int) -> None:
        """Pull host i's cable: its link goes down on the control plane's side."""
        ip("link", "set", self.root_link(i), "down")

    def restore(self, i: int) -> None:
        ip("link", "set", self.root_link(i), "up")

    def destroy(self) -> None:
        """Kill what still runs inside, delete links and namespaces and the route."""
        for ns in self.created:
            _kill_inside(ns)
        for i in range(1, self.count + 1):
            ip("link", "del", self.root_link(i), check=False)
        for ns in self.created:
            ip("netns", "del", ns, check=False)
        self.created.clear()
        ip("route", "del", "unreachable", str(SUPERNET), "metric", "4242", check=False)

    @staticmethod
    def remove_stale(prefix: str) -> list[str]:
        """Namespaces, links and the route a killed earlier run with this prefix left behind."""
        stale = [
            name
            for line in ip("netns", "list").stdout.splitlines()
            if (name := line.split()[0]).startswith(f"{prefix}-")
        ]
        for ns in stale:
            _kill_inside(ns)
            ip("netns", "del", ns, check=False)
        for line in ip("-o", "link", "show").stdout.splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            if name.startswith(prefix) and name.endswith("-r"):
                ip("link", "del", name, check=False)
        ip("route", "del", "unreachable", str(SUPERNET), "metric", "4242", check=False)
        return stale


def _in_supernet(route_line: str) -> bool:
    first = route_line.split()[0] if route_line.split() else ""
    if first in ("unreachable", "blackhole", "prohibit", "local", "broadcast"):
        first = route_line.split()[1]
    try:
        return ipaddress.ip_network(first, strict=False).overlaps(SUPERNET)
    except ValueError:
        return False


def _kill_inside(ns: str) -> None:
    """SIGKILL every process of a namespace this lab created (`ip netns pids`)."""
    pids = ip("netns", "pids", ns, check=False).stdout.split()
    if pids:
        subprocess.run(["kill", "-9", *pids], capture_output=True, check=False)


class TcpForwarder:
    """Listen on (host, port) pairs and relay each connection to a target (host, port).

    Runs its own event loop in a daemon thread; `close()` stops listening and drops the
    connections it relays."""

    def __init__(self, routes: Sequence[tuple[tuple[str, int], tuple[str, int]]]) -> None:
        self.routes = list(routes)
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.AbstractServer] = []
        self._conns: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> TcpForwarder:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        return self

    async def _listen(self) -> None:
        for (host, port), target in self.routes:
            server = await asyncio.start_server(
                lambda r, w, target=target: self._relay(r, w, target), host, port
            )
            self._servers.append(server)

    async def _relay(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: tuple[str, int]
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        self._conns.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(OSError, RuntimeError):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._conns.difference_update((writer, up_writer))

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                server.close()
            for conn in list(self._conns):
                conn.close()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
