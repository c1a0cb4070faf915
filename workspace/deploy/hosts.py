"""The rehearsal's machines: one folder per host, the runbook's blocks run there, and the mover.

A host's folder is its home (`HOME`, with its own `TMPDIR`): what that machine holds,
nothing shared. A block runs as `bash -e` in the host's network namespace, after its
role's terminal block (docs/deployment.md says every terminal starts with it), with
its placeholders replaced. Consecutive `fx` lines of a block run in one process through
`fx`'s own entry point (workspace/simulate/fx_batch.py): the same command lines,
without seconds of imports each. The checkout blocks are stood in for (`checkout`).
Files go between hosts only through `move`, which allows what the runbook's travel
table lists and refuses anything else.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from workspace.deploy.network import Network
from workspace.deploy.runbook import Runbook, RunbookError

REPO = Path(__file__).resolve().parents[2]
FX_BATCH = REPO / "workspace" / "simulate" / "fx_batch.py"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class StepFailed(RuntimeError):
    """A runbook block failed on a host; the message names it and ends with its output."""


def batch_fx_lines(script: str) -> str:
    """script with each run of 2+ consecutive `fx ...` lines (comments dropped) turned into
    one `python fx_batch.py 'LINE' 'LINE'` call."""
    out, run = [], []

    def flush():
        if len(run) > 1:
            out.append(f"python {shlex.quote(str(FX_BATCH))} " + " ".join(shlex.quote(line) for line in run))
        else:
            out.extend(f"fx {line}" for line in run)
        run.clear()

    for line in script.splitlines():
        words = shlex.split(line, comments=True) if line.strip() else []
        if words[:1] == ["fx"] and len(words) > 1:
            run.append(shlex.join(words[1:]))
            continue
        flush()
        out.append(line)
    flush()
    return "\n".join(out) + "\n"


def working_tree_files(repo: Path = REPO) -> list[str]:
    """What a fresh clone of the checkout's next commit holds: tracked and new files
    (git-ignored ones left out), as they are in the working tree."""
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout.decode()
    return sorted({f for f in out.split("\0") if f and (repo / f).is_file()})


class Machine:
    def __init__(self, name: str, role: str, root: Path, network: Network):
        self.name, self.role, self.network = name, role, network
        self.home = root / "hosts" / name
        self.logs = root / "logs"
        self.etc_hosts = root / "etc" / f"{name}.hosts"  # used in loopback mode only
        for folder in (self.home / "tmp", self.logs, self.etc_hosts.parent):
            folder.mkdir(parents=True, exist_ok=True)
        self.etc_hosts.write_text(network.hosts_file(None))
        self._log_counts: dict[str, int] = {}

    def env(self) -> dict:
        return {"PATH": SYSTEM_PATH, "HOME": str(self.home), "TMPDIR": str(self.home / "tmp"),
                "LANG": "C.UTF-8", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}

    def argv(self, script: str) -> list[str]:
        return self.network.wrap(self.name, ["bash", "-eo", "pipefail", "-c", script], self.etc_hosts)

    def log_path(self, label: str) -> Path:
        n = self._log_counts[label] = self._log_counts.get(label, 0) + 1
        return self.logs / f"{self.name}-{label.replace('/', '-')}{'' if n == 1 else f'-{n}'}.log"

    def run(self, script: str, label: str, answer: Callable[[str], str | None] | None = None,
            timeout_s: float = 600) -> str:
        """Run script to its end; its output. `answer(output so far)` replies to a prompt
        (it is asked again after each new piece of output, and returns None to wait)."""
        log_path = self.log_path(label)
        proc = subprocess.Popen(self.argv(script), cwd=self.home, env=self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.PIPE, start_new_session=True)
        chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stdout.read1(4096), b"")),
                                  daemon=True)
        reader.start()
        deadline, seen = time.monotonic() + timeout_s, 0
        try:
            while reader.is_alive():
                reader.join(0.1)
                if answer is not None and len(chunks) != seen:
                    seen = len(chunks)
                    reply = answer(b"".join(chunks).decode(errors="replace"))
                    if reply is not None:
                        proc.stdin.write(reply.encode())
                        proc.stdin.flush()
                if time.monotonic() > deadline:
                    raise StepFailed(f"{self.name}: {label} took over {timeout_s:.0f} s")
            code = proc.wait()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            output = b"".join(chunks).decode(errors="replace")
            log_path.write_text(output)
        if code != 0:
            raise StepFailed(f"{self.name}: {label} exited with {code} ({log_path}):\n" + "\n".join(
                output.splitlines()[-30:]))
        return output

    def start(self, script: str, label: str) -> tuple[subprocess.Popen, Path]:
        """Start a long-running script (a service) in its own session; its process and log."""
        log_path = self.log_path(label)
        with open(log_path, "w") as log:
            proc = subprocess.Popen(self.argv(script), cwd=self.home, env=self.env(), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        return proc, log_path


class Rehearsal:
    """The runbook played on several machines: what ran, and every file moved."""

    def __init__(self, root: Path, runbook: Runbook, network: Network, roles: dict[str, str],
                 values: dict[str, str]):
        self.root, self.runbook, self.network = root, runbook, network
        self.machines = {name: Machine(name, role, root, network) for name, role in roles.items()}
        self.values = values  # placeholders every host shares (AGG_FQDN, DATA, ...)
        self.ran: set[str] = set()
        self.moved: list[tuple[str, str, str]] = []
        self.services: list[subprocess.Popen] = []

    def values_for(self, host: str, **extra: str) -> dict[str, str]:
        machine = self.machines[host]
        site = {"SITE": host} if machine.role == "site" else {}
        return {**self.values, **site, **extra}

    def script(self, host: str, name: str, **extra: str) -> str:
        machine = self.machines[host]
        if not name.startswith(machine.role + "/"):
            raise RunbookError(f"{host} is a {machine.role}: it does not run {name}")
        values = self.values_for(host, **extra)
        terminal = self.runbook.render(f"{machine.role}/terminal", values)
        self.ran.update({name, f"{machine.role}/terminal"})
        return terminal + batch_fx_lines(self.runbook.render(name, values))

    def run(self, host: str, name: str, answer=None, **extra: str) -> str:
        return self.machines[host].run(self.script(host, name, **extra), name, answer)

    def start(self, host: str, name: str, **extra: str) -> tuple[subprocess.Popen, Path]:
        if not self.runbook.block(name).service:
            raise RunbookError(f"{name} is not tagged `service`")
        proc, log = self.machines[host].start(self.script(host, name, **extra), name)
        self.services.append(proc)
        return proc, log

    def write_file(self, host: str, name: str) -> Path:
        """A `file=` block, written where it says, placeholders replaced."""
        block, values = self.runbook.block(name), self.values_for(host)
        path = self.expand(host, self.runbook.substitute(block.file, values))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.runbook.render(name, values))
        self.ran.add(name)
        return path

    def expand(self, host: str, path: str) -> Path:
        return self.machines[host].home / path[2:] if path.startswith("~/") else Path(path)

    def checkout(self, host: str) -> None:
        """Stand in for ROLE/checkout: `git clone REPO_URL DIR` copies the checkout's files,
        `git checkout COMMIT` is the working tree already, `make setup` links its .venv."""
        machine = self.machines[host]
        name = f"{machine.role}/checkout"
        cwd = machine.home
        for line in self.runbook.block(name).text.splitlines():
            for command in filter(None, (c.strip() for c in line.split("&&"))):
                words = shlex.split(command, comments=True)
                if words[:1] == ["cd"] and len(words) == 2:
                    cwd = machine.home if words[1] == "~" else cwd / words[1]
                elif words[:3] == ["git", "clone", "REPO_URL"] and len(words) == 4:
                    for f in working_tree_files():
                        (cwd / words[3] / f).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(REPO / f, cwd / words[3] / f, follow_symlinks=False)
                elif words == ["git", "checkout", "COMMIT"]:
                    continue
                elif words == ["make", "setup"]:
                    (cwd / ".venv").symlink_to(REPO / ".venv")
                elif words:
                    raise RunbookError(f"{name}: the rehearsal cannot stand in for `{command}`")
        self.ran.add(name)

    def move(self, file_name: str, source: str, target: str) -> Path:
        """Copy one file the travel table lets go from `source` to `target`; RunbookError otherwise."""
        src, dst = self.machines[source], self.machines[target]
        site = source if src.role == "site" else target
        row = self.runbook.transfer(file_name, src.role, dst.role, self.values_for(site))
        origin = self.expand(source, row.source_dir) / file_name
        destination = self.expand(target, row.target_dir) / file_name
        if not origin.is_file():
            raise RunbookError(f"{source} has no {origin} to send")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(origin, destination)
        self.moved.append((file_name, source, target))
        return destination

    def stop_services(self, grace_s: float = 5.0) -> None:
        """SIGTERM every service still running (a paused one is resumed first), SIGKILL after grace_s."""
        for proc in self.services:
            if proc.poll() is None:
                signal_group(proc, signal.SIGCONT)
                signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.services:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            signal_group(proc, signal.SIGKILL)


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
