"""docs/deployment.md as data: its tagged blocks, its placeholders, and what travels between hosts.

The runbook is the one source of the deployment's commands; the rehearsal runs what
this module reads from it. Three kinds of tag (HTML comments, invisible when rendered):

- `<!-- runbook: ROLE/STEP [service] [file=PATH] -->` right before a fenced block: a
  block of commands one role runs (`service`: it keeps running, e.g. the aggregator),
  or with `file=` a file the operator writes at PATH;
- `<!-- runbook: placeholders -->` before a table whose first column lists the
  placeholders (`AGG_FQDN`, `SITE`, ...) the commands use;
- `<!-- runbook: travel -->` before the table of files that go between machines:
  columns file, made by, from (`ROLE` + `folder`), to (`ROLE` + `folder`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

TAG = re.compile(r"^<!--\s*runbook:\s*(?P<name>\S+)(?P<options>.*?)-->\s*$")
FENCE = re.compile(r"^```(?P<lang>\w*)\s*$")
CODE = re.compile(r"`([^`]+)`")
ROLES = ("coordinator", "site")


class RunbookError(ValueError):
    """The runbook does not have the shape the rehearsal reads; the message names file and line."""


@dataclass(frozen=True)
class Block:
    role: str
    step: str
    lang: str
    text: str
    line: int
    service: bool = False
    file: str | None = None

    @property
    def name(self) -> str:
        return f"{self.role}/{self.step}"


@dataclass(frozen=True)
class Transfer:
    """One row of the travel table: a file name (with placeholders) and where it may go."""
    pattern: str
    source_role: str
    source_dir: str
    target_role: str
    target_dir: str


class Runbook:
    def __init__(self, path: Path, blocks: dict[str, Block], placeholders: list[str], travel: list[Transfer]):
        self.path, self.blocks, self.placeholders, self.travel = path, blocks, placeholders, travel
        # longest first, so MODEL_SETTINGS is never read as a shorter name; a placeholder is
        # delimited by anything but letters and digits (`col_SITE_to_...` holds SITE)
        names = "|".join(sorted(map(re.escape, placeholders), key=len, reverse=True))
        self._placeholder = re.compile(rf"(?<![A-Za-z0-9])({names})(?![A-Za-z0-9])")

    @classmethod
    def parse(cls, path: Path) -> "Runbook":
        lines = Path(path).read_text().splitlines()
        blocks, placeholders, travel = {}, [], []
        for i, line in enumerate(lines):
            tag = TAG.match(line.strip())
            if not tag:
                continue
            where = f"{path}:{i + 1}"
            name, options = tag["name"], tag["options"].split()
            if name == "placeholders":
                placeholders = [_code(row[0]) for row in _table(lines, i + 1, where)]
            elif name == "travel":
                travel = [_transfer(row, where) for row in _table(lines, i + 1, where)]
            else:
                block = _block(lines, i, name, options, where)
                if block.name in blocks:
                    raise RunbookError(f"{where}: block {block.name!r} is tagged twice")
                blocks[block.name] = block
        if not placeholders or not travel:
            raise RunbookError(f"{path}: needs a `<!-- runbook: placeholders -->` and a "
                               f"`<!-- runbook: travel -->` table")
        return cls(Path(path), blocks, placeholders, travel)

    def block(self, name: str) -> Block:
        if name not in self.blocks:
            raise RunbookError(f"{self.path}: no block tagged {name!r} (tagged: {sorted(self.blocks)})")
        return self.blocks[name]

    def used_placeholders(self, text: str) -> set[str]:
        return set(self._placeholder.findall(text))

    def substitute(self, text: str, values: dict[str, str], where: str = "") -> str:
        """text with every placeholder replaced; an error names any placeholder not given."""
        missing = self.used_placeholders(text) - set(values)
        if missing:
            raise RunbookError(f"{where or self.path}: no value for {sorted(missing)}")
        return self._placeholder.sub(lambda m: values[m.group(1)], text)

    def render(self, name: str, values: dict[str, str]) -> str:
        block = self.block(name)
        return self.substitute(block.text, values, f"{self.path}:{block.line} ({name})")

    def transfer(self, file_name: str, source_role: str, target_role: str, values: dict[str, str]) -> Transfer:
        """The travel-table row that lets `file_name` go from source_role to target_role
        (placeholders replaced by `values`); RunbookError if there is none."""
        for row in self.travel:
            if (row.source_role, row.target_role) == (source_role, target_role) and \
                    self.substitute(row.pattern, values) == file_name:
                return row
        allowed = [f"{r.pattern}: {r.source_role} -> {r.target_role}" for r in self.travel]
        raise RunbookError(f"{file_name} may not go from {source_role} to {target_role}: "
                           f"{self.path}'s travel table lists only {allowed}")


def _block(lines: list[str], tag_index: int, name: str, options: list[str], where: str) -> Block:
    role, _, step = name.partition("/")
    if role not in ROLES or not step:
        raise RunbookError(f"{where}: block name {name!r} must be ROLE/STEP with ROLE one of {ROLES}")
    fence = FENCE.match(lines[tag_index + 1]) if tag_index + 1 < len(lines) else None
    if not fence:
        raise RunbookError(f"{where}: the line after the tag {name!r} must open a fenced block (```bash)")
    end = next((j for j in range(tag_index + 2, len(lines)) if lines[j].strip() == "```"), None)
    if end is None:
        raise RunbookError(f"{where}: the block {name!r} is never closed")
    file = next((o.split("=", 1)[1] for o in options if o.startswith("file=")), None)
    unknown = [o for o in options if o != "service" and not o.startswith("file=")]
    if unknown:
        raise RunbookError(f"{where}: unknown options {unknown} (known: service, file=PATH)")
    return Block(role, step, fence["lang"], "\n".join(lines[tag_index + 2:end]) + "\n", tag_index + 3,
                 service="service" in options, file=file)


def _code(cell: str) -> str:
    """A table cell's first `code` span, else its text."""
    found = CODE.search(cell)
    return found[1] if found else cell


def _table(lines: list[str], start: int, where: str) -> list[list[str]]:
    """The cells of the markdown table starting at `start` (header and rule skipped)."""
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    if len(rows) < 3:
        raise RunbookError(f"{where}: the tag must be followed by a table (header, rule, rows)")
    return rows[2:]


def _transfer(cells: list[str], where: str) -> Transfer:
    """A travel row: file, made by, from (ROLE `folder`), to (ROLE `folder`)."""
    if len(cells) != 4:
        raise RunbookError(f"{where}: travel rows need 4 columns (file, made by, from, to): {cells}")

    def place(cell: str) -> tuple[str, str]:
        role = cell.split()[0] if cell.split() else ""
        folder = CODE.search(cell)
        if role not in ROLES or not folder:
            raise RunbookError(f"{where}: {cell!r} must be a role {ROLES} and a `folder`")
        return role, folder[1]

    return Transfer(_code(cells[0]), *place(cells[2]), *place(cells[3]))
