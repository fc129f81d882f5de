"""App "hosts" on one machine: a network namespace each, joined to the test's own (root)
namespace by two veth links, one towards the users ("front") and one towards the
database ("db"). Needs root and iproute2; everything created is removed on the way out.

Addresses come from one 10.N.0.0/16 that no route of this machine uses: for host i,
front 10.N.(2i).1 (root side) / 10.N.(2i).2 (the host), db 10.N.(2i+1).1 / 10.N.(2i+1).2.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

IP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Host:
    """One namespace and its two links."""

    index: int
    namespace: str
    front_link: str  # the root side of the users' link
    db_link: str  # the root side of the database link (``ip link set ... down`` cuts it)
    address: str  # where the host's app listens (front link, host side)
    db_gateway: str  # the root side of the database link: the forwarder listens here


def ip(*arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``ip <arguments>`` (bounded)."""
    return subprocess.run(  # noqa: S603 - fixed program, arguments from this module
        ["ip", *arguments],  # noqa: S607 - iproute2 from PATH
        capture_output=True,
        text=True,
        timeout=IP_TIMEOUT,
        check=check,
    )


def unavailable() -> str | None:
    """Why namespaces cannot be made here (not root, no iproute2, not allowed), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    probe = f"qsprobe{os.getpid()}"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


def _free_prefix() -> int:
    """N of a 10.N.0.0/16 with no address or route of this machine in it."""
    taken = ip("-4", "route", "show", "table", "all").stdout + ip("-4", "addr").stdout
    candidates = list(range(100, 250))
    random.shuffle(candidates)  # two runs at once pick different ones
    for second in candidates:
        if f"10.{second}." not in taken:
            return second
    raise RuntimeError("no free 10.N.0.0/16 for the test's links")


@contextmanager
def hosts(count: int) -> Iterator[list[Host]]:
    """``count`` namespaces with their links, removed (with anything left running in
    them) on the way out, whatever happened."""
    tag = f"{os.getpid() % 100000}{random.randrange(100):02d}"
    second = _free_prefix()
    made: list[Host] = []
    try:
        for index in range(count):
            namespace = f"qs-{tag}-h{index}"
            host = Host(
                index=index,
                namespace=namespace,
                front_link=f"qf{tag}{index}",
                db_link=f"qd{tag}{index}",
                address=f"10.{second}.{2 * index}.2",
                db_gateway=f"10.{second}.{2 * index + 1}.1",
            )
            ip("netns", "add", namespace)
            made.append(host)
            ip("-n", namespace, "link", "set", "lo", "up")
            for link, inside, subnet in (
                (host.front_link, "front", 2 * index),
                (host.db_link, "db", 2 * index + 1),
            ):
                ip("link", "add", link, "type", "veth", "peer", "name", inside, "netns", namespace)
                ip("addr", "add", f"10.{second}.{subnet}.1/24", "dev", link)
                ip("link", "set", link, "up")
                ip("-n", namespace, "addr", "add", f"10.{second}.{subnet}.2/24", "dev", inside)
                ip("-n", namespace, "link", "set", inside, "up")
        yield made
    finally:
        for host in made:
            _remove(host)


def _remove(host: Host) -> None:
    pids = ip("netns", "pids", host.namespace, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass
    # Deleting the namespace deletes its veth ends, and with them their root-side peers.
    ip("netns", "del", host.namespace, check=False)
    for link in (host.front_link, host.db_link):
        ip("link", "del", link, check=False)  # already gone unless something held the ns


def set_link(link: str, up: bool) -> None:
    ip("link", "set", link, "up" if up else "down")
