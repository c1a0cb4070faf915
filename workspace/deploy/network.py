"""Separate machines on one: a Linux network namespace per host, on a private bridge.

Topology: a namespace holding only a bridge (the "switch"), one namespace per host
joined to it by a veth pair, each host's address in 10.77.0.0/24 assigned inside its
own namespace, and its /etc/hosts (`/etc/netns/NS/hosts`, which `ip netns exec`
mounts over /etc/hosts) naming the aggregator's FQDN. No host namespace has a route
beyond that subnet and loopback, so nothing it runs reaches any other address; the
machine's own interfaces and routes are never touched. Everything made is tagged with
this process's id: `remove_leftovers()` removes what a crashed earlier run left.

Where namespaces are refused (`ip netns add` fails), every host runs in the machine's
own network on loopback: the aggregator's FQDN resolves to 127.0.0.10 through a
private /etc/hosts per command (a mount namespace, `unshare --mount`), and `mode`
says "loopback" so the caller can report which ran.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

SUBNET = "10.77.0"
LOOPBACK_AGGREGATOR = "127.0.0.10"
NETNS_ETC = Path("/etc/netns")
NETNS_RUN = Path("/var/run/netns")
TAG = "fxd"  # namespaces are named fxd<pid>-<host>


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    hostname: str


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def _namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def remove_leftovers() -> list[str]:
    """Delete the namespaces and /etc/netns folders of rehearsals whose process is gone."""
    pattern = re.compile(rf"^{TAG}(\d+)-")
    removed = []
    for ns in _namespaces():
        found = pattern.match(ns)
        if found and not _alive(int(found[1])):
            _ip("netns", "del", ns, check=False)
            removed.append(ns)
    if NETNS_ETC.is_dir():
        for folder in NETNS_ETC.iterdir():
            found = pattern.match(folder.name)
            if found and not _alive(int(found[1])):
                _remove_etc(folder)
                removed.append(str(folder))
        if removed and not any(NETNS_ETC.iterdir()):
            NETNS_ETC.rmdir()
    return removed


def _remove_etc(folder: Path):
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()


class Network:
    """The hosts' network: create() it, wrap() each command for its host, destroy() it."""

    def __init__(self, names: list[str], aggregator: str, fqdn: str, domain: str = "fed.test",
                 force_loopback: bool = False):
        self.prefix = f"{TAG}{os.getpid()}-"
        self.fqdn, self.aggregator, self.mode = fqdn, aggregator, "loopback" if force_loopback else "namespaces"
        self.why_loopback = "asked for" if force_loopback else ""
        self.hosts = {name: Host(name, f"{SUBNET}.{i + 1}", f"{name}.{domain}") for i, name in enumerate(names)}
        self._made_etc = not NETNS_ETC.exists()
        self._namespaces: list[str] = []
        self._etc: list[Path] = []

    def ns(self, name: str) -> str:
        return f"{self.prefix}{name}"

    @property
    def aggregator_address(self) -> str:
        return self.hosts[self.aggregator].address if self.mode == "namespaces" else LOOPBACK_AGGREGATOR

    def describe(self) -> str:
        if self.mode == "namespaces":
            hosts = ", ".join(f"{h.hostname} {h.address}" for h in self.hosts.values())
            return (f"network namespaces on a private bridge ({SUBNET}.0/24): {hosts}; "
                    f"{self.fqdn} -> {self.aggregator_address}")
        return f"loopback ({self.why_loopback}): {self.fqdn} -> {LOOPBACK_AGGREGATOR} on this machine's network"

    def create(self):
        if self.mode == "namespaces" and not self._try_namespaces():
            self.destroy()
            self.mode, self.why_loopback = "loopback", "`ip netns add` was refused"

    def _try_namespaces(self) -> bool:
        switch = self.ns("switch")
        if _ip("netns", "add", switch, check=False).returncode != 0:
            return False
        self._namespaces.append(switch)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for host in self.hosts.values():
            ns, port = self.ns(host.name), f"v-{host.name}"[:15]
            _ip("netns", "add", ns)
            self._namespaces.append(ns)
            _ip("-n", switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", switch, "link", "set", port, "master", "br0")
            _ip("-n", switch, "link", "set", port, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            etc = NETNS_ETC / ns
            etc.mkdir(parents=True, exist_ok=True)
            self._etc.append(etc)
            (etc / "hosts").write_text(self.hosts_file(host))
        return True

    def hosts_file(self, host: Host | None) -> str:
        lines = ["127.0.0.1 localhost"]
        if host is not None and self.mode == "namespaces":
            lines.append(f"{host.address} {host.hostname} {host.name}")
        lines.append(f"{self.aggregator_address} {self.fqdn}")
        return "\n".join(lines) + "\n"

    def wrap(self, name: str, argv: list[str], hosts_file: Path | None = None) -> list[str]:
        """argv run as host `name`: in its namespace, with its host name (own UTS namespace).
        In loopback mode: in a private mount namespace whose /etc/hosts is `hosts_file`."""
        host = self.hosts[name]
        if self.mode == "namespaces":
            inner = f"hostname {shlex.quote(host.hostname)} && exec {shlex.join(argv)}"
            return ["ip", "netns", "exec", self.ns(name), "unshare", "--uts", "sh", "-c", inner]
        if hosts_file is None:
            raise ValueError("loopback mode needs the host's hosts file")
        inner = f"mount --bind {shlex.quote(str(hosts_file))} /etc/hosts && exec {shlex.join(argv)}"
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", inner]

    def destroy(self):
        """Remove every namespace (their veths go with them) and /etc/netns folder made."""
        for ns in reversed(self._namespaces):
            _ip("netns", "del", ns, check=False)
        self._namespaces.clear()
        for etc in self._etc:
            if etc.exists():
                _remove_etc(etc)
        self._etc.clear()
        if self._made_etc and NETNS_ETC.is_dir() and not any(NETNS_ETC.iterdir()):
            NETNS_ETC.rmdir()

    def leftovers(self) -> list[str]:
        """What of this network still exists (empty after destroy())."""
        made = [ns for ns in _namespaces() if ns.startswith(self.prefix)]
        etc = [str(p) for p in NETNS_ETC.glob(f"{self.prefix}*")] if NETNS_ETC.is_dir() else []
        return made + etc
