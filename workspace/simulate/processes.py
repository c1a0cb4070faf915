"""The `fx` processes of a run: started in their own sessions, watched, and killed as whole trees.

Each child runs in a new session, so stopping the run (a failure, Ctrl-C, SIGTERM) kills
everything it started, grandchildren included, and no `fx` outlives it.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from workspace.simulate import RunFailed

FX = str(Path(sys.executable).parent / "fx")


class Children:
    """Started processes by name, each with the log file its output goes to."""

    def __init__(self):
        self.procs: dict[str, tuple[subprocess.Popen, Path]] = {}

    def start(self, name: str, cmd: list[str], cwd: Path, log_path: Path, env=None):
        log_file = open(log_path, "w")
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
        self.procs[name] = (proc, log_path)
        return proc

    def check(self) -> bool:
        """True once every process exited with 0; RunFailed (with its log tail) as soon as one fails."""
        states = {name: proc.poll() for name, (proc, _) in self.procs.items()}
        failed = {n: c for n, c in states.items() if c not in (None, 0)}
        if failed:
            name, code = next(iter(failed.items()))
            raise RunFailed(f"{name} exited with {code}:\n{tail(self.procs[name][1])}")
        return all(c == 0 for c in states.values())

    def kill_all(self, grace_s: float = 5.0):
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        for proc, _ in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def fx_environment() -> dict:
    """The environment of an `fx` process.

    fx puts the workspace on sys.path itself; an inherited PYTHONPATH (the Makefile
    exports the repository root) would shadow OpenFL's own `workspace` template
    package with this repository's workspace/ tools folder."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def free_port() -> int:
    """A port free now; another process may take it before it is bound (PortReservation holds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortReservation:
    """A TCP port held from the moment it is picked until the server meant for it listens.

    Picking a free port and binding it later leaves a gap in which another process can
    take it; a gRPC server (the aggregator) binds with SO_REUSEPORT and would then share
    the port silently. This socket is bound with SO_REUSEPORT too, so the aggregator
    (same user) binds beside it, while the kernel hands the port to no one else's
    `bind(0)`. It never listens, so it gets no connection; `release()` once the server
    listens (wait_for_port)."""

    def __init__(self, port: int = 0):
        try:  # gRPC listens on [::]:port
            self._socket, address = socket.socket(socket.AF_INET6, socket.SOCK_STREAM), "::"
        except OSError:  # a host without IPv6
            self._socket, address = socket.socket(socket.AF_INET, socket.SOCK_STREAM), "0.0.0.0"
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self._socket.bind((address, port))
        self.port = self._socket.getsockname()[1]

    def release(self) -> None:
        self._socket.close()


def wait_for_port(port: int, proc: subprocess.Popen, log_path: Path, timeout_s: float = 180):
    """Return once the aggregator listens on `port`; RunFailed if it exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RunFailed(f"aggregator exited with {proc.returncode} before listening:\n{tail(log_path)}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise RunFailed(f"aggregator did not listen on port {port} within {timeout_s:.0f} s:\n{tail(log_path)}")
