"""Hosts on this machine: a network namespace each, joined by veth pairs to one bridge.

Every host has its own network stack, so its faults are real: `kill()` ends every
process it runs (a machine dying), `cut()` takes its link down, and `isolate()` drops
its packets to and from chosen peers with nftables rules inside the host (a
partition; this kernel has no netem, so there is no delay, only loss). The test
process stays in the root namespace, on the bridge's own address, as a client would
be on the same network.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


def _ip(*argv: str, namespace: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    subprocess.run([*prefix, "ip", *argv], check=True, capture_output=True)


def _free_subnet() -> int:
    """A 10.77.N.0/24 that no interface of this machine is on (N in 1..254)."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True)
    taken = {int(part.split(".")[2]) for part in used.stdout.split() if part.startswith("10.77.")}
    return next(n for n in range(1, 255) if n not in taken)


@dataclass
class Host:
    """One machine: a namespace with one interface (`eth0`) on the network's bridge."""

    name: str
    namespace: str
    address: str
    # The bridge side of this host's veth pair (`cut()` takes it down).
    link: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(
        self,
        argv: Sequence[str],
        log: Path,
        env: dict[str, str] | None = None,
        user: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Run `argv` on this host (as `user` if given), its output appended to `log`."""
        as_user = ["runuser", "-u", user, "--"] if user else []
        with log.open("ab") as output:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace, *as_user, *argv],
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def pids(self) -> list[int]:
        found = subprocess.run(
            ["ip", "netns", "pids", self.namespace], capture_output=True, text=True, check=False
        )
        return [int(pid) for pid in found.stdout.split()]

    def kill(self) -> None:
        """The machine dies: SIGKILL to every process in its namespace, at once, and its
        kernel's sockets with them. Killed processes leave their sockets to the kernel,
        which would go on sending what they had written (say, a Redis master's last
        replication stream, once a partition heals); a dead machine sends nothing."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for process in self.processes:
            process.wait()
        self.processes.clear()
        subprocess.run(
            ["ip", "netns", "exec", self.namespace, "ss", "--kill", "--all", "--tcp"],
            check=True,
            capture_output=True,
        )

    def stop(self, timeout: float = 10) -> None:
        """A clean shutdown: SIGTERM to every process, SIGKILL to any left after `timeout`."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.kill()

    def cut(self) -> None:
        """Pull the cable: the host's link goes down (its processes go on running)."""
        _ip("link", "set", self.link, "down")

    def restore(self) -> None:
        _ip("link", "set", self.link, "up")

    def isolate(self, *peers: Host) -> None:
        """Drop every packet between this host and `peers` (both ways), from now on."""
        addresses = ", ".join(peer.address for peer in peers)
        rules = f"""
            table inet partition {{
                chain input {{
                    type filter hook input priority 0; ip saddr {{ {addresses} }} drop;
                }}
                chain output {{
                    type filter hook output priority 0; ip daddr {{ {addresses} }} drop;
                }}
            }}
        """
        subprocess.run(
            ["ip", "netns", "exec", self.namespace, "nft", "-f", "-"],
            input=rules.encode(),
            check=True,
            capture_output=True,
        )

    def heal(self) -> None:
        """Remove the partition `isolate()` made."""
        subprocess.run(
            ["ip", "netns", "exec", self.namespace, "nft", "delete", "table", "inet", "partition"],
            check=False,
            capture_output=True,
        )


class Network:
    """A bridge in the root namespace with hosts on it; `close()` removes it all."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(2)
        self.subnet = _free_subnet()
        self.bridge = f"tha{self.tag}"
        self.address = f"10.77.{self.subnet}.1"
        self.hosts: list[Host] = []
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def host(self, name: str, number: int) -> Host:
        """A new host `name` at 10.77.<subnet>.<number>."""
        namespace = f"tally-{self.tag}-{name}"
        link = f"th{self.tag}{name}"[:15]
        address = f"10.77.{self.subnet}.{number}"
        subprocess.run(["ip", "netns", "add", namespace], check=True)
        _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("link", "set", link, "master", self.bridge, "up")
        _ip("addr", "add", f"{address}/24", "dev", "eth0", namespace=namespace)
        _ip("link", "set", "eth0", "up", namespace=namespace)
        _ip("link", "set", "lo", "up", namespace=namespace)
        host = Host(name, namespace, address, link)
        self.hosts.append(host)
        return host

    def close(self) -> None:
        for host in self.hosts:
            host.kill()
            subprocess.run(["ip", "netns", "delete", host.namespace], check=False)
        subprocess.run(["ip", "link", "delete", self.bridge], check=False, capture_output=True)
