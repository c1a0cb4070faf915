"""OpenFL plumbing of masked uploads (src/secure_aggregation.py): keys and rosters through the aggregator.

Plan setting `pairwise_masking: true` (one value, written once in plan.yaml and
given to the aggregator and the task runner). Not OpenFL's `secure_aggregation`
key, which switches on OpenFL's own scheme (docs/privacy.md says why not).

Site side (SiteMasking, used by the task runner): when it starts, the site
registers its public key and, per task group, the tensors it uploads
(a `secagg_register` task result for round -1), then asks for each round's
roster (`get_aggregated_tensor("secagg_roster", round, tags=("secagg",))`) and
replaces its trained tensors by one masked message per group and weight
component (src/task_groups.py:weight_components), named
`<group>/secure_sum/<component>`. A group the roster gives only this site is not
uploaded (a sum of one is the update itself); a site whose own update is not
finite abstains (zero messages, zero counts), because the aggregator cannot leave
one masked message out.

Aggregator side (RosterBook): keeps the registrations and freezes each round's
roster at the first request once every listed site has registered, so every
site of a round masks over the same members; a site that registers later joins
from the next roster. The book is saved next to the tensor store, so a restarted
aggregator can still unmask the uploads it replays.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from openfl.protocols import utils
from openfl.utilities import TensorKey

from src.atomic_files import write_bytes_atomically
from src.model.config import task_group_of
from src.secure_aggregation import SiteKey, flatten, masked, stream_name, to_wire

log = logging.getLogger(__name__)

REGISTER_TASK = "secagg_register"
ROSTER = "secagg_roster"
TAGS = ("secagg",)
MARKER = "/secure_sum/"


def message_name(group: str, component: str) -> str:
    return f"{group}{MARKER}{component}"


def is_message(name: str) -> bool:
    return MARKER in name


def group_layout(names_by_site: dict) -> tuple[list, dict]:
    """(the tensors a group's messages carry, in order; {tensor: sites that upload it}).

    Every member's message covers the same tensors, each member filling the ones it
    does not train with zeros; a tensor only one member uploads is left out (its sum
    would be that site's value) and keeps its previous global value."""
    holders: dict = {}
    for site, names in names_by_site.items():
        for name in names:
            holders.setdefault(name, []).append(site)
    shared = {name: sorted(sites) for name, sites in holders.items() if len(sites) >= 2}
    return sorted(shared), shared


def json_tensor(name: str, origin: str, round_number: int, payload: dict):
    """A NamedTensor carrying JSON (how OpenFL's own secagg setup travels)."""
    return utils.construct_named_tensor(TensorKey(name, origin, round_number, False, TAGS),
                                        json.dumps(payload).encode(), {}, lossless=True)


def json_of(named_tensor) -> dict:
    return json.loads(named_tensor.data_bytes)


class SiteMasking:
    """A site's side of the masked upload (see the module docstring)."""

    def __init__(self, site: str, key_path: Path, client, federation: str, poll_s: float = 0.5):
        self.site, self.client, self.federation, self.poll_s = site, client, federation, poll_s
        self.key = SiteKey.load_or_create(key_path)
        self.registered: dict | None = None  # {group: {tensor name: shape}}

    def register(self, shapes: dict):
        """Publish the key and, per group, the tensors this site uploads ({name: shape})."""
        self.registered = {}
        for name in sorted(shapes):
            self.registered.setdefault(task_group_of(name), {})[name] = [int(d) for d in shapes[name]]
        payload = {"public_key": self.key.public_hex, "groups": self.registered}
        self.client.send_local_task_results(-1, REGISTER_TASK, 0, [json_tensor("registration", self.site, -1, payload)])
        log.info("secure aggregation: registered key %s... for groups %s", self.key.public_hex[:12],
                 sorted(self.registered))

    def roster(self, round_number: int) -> dict:
        """The round's roster from the aggregator, waiting while sites are still registering."""
        waited, last_log = 0.0, -30.0
        while True:
            answer = json_of(self.client.get_aggregated_tensor(ROSTER, round_number, False, TAGS, True))
            if answer.get("ready"):
                return answer
            if waited - last_log >= 30.0:
                log.info("secure aggregation: round %d waits for %s to register", round_number,
                         answer.get("waiting_for"))
                last_log = waited
            time.sleep(self.poll_s)
            waited += self.poll_s

    def mask_upload(self, upload: dict, round_number: int, counts: dict, abstain: bool = False) -> dict:
        """upload ({TensorKey: array}) with its trained tensors replaced by masked messages.

        counts: {group: images} this site reports as `samples_<group>` (0 when absent)."""
        trained = {k: v for k, v in upload.items() if "metric" not in k.tags}
        if self.registered is None:
            raise RuntimeError("mask_upload before register: the site registers when it starts")
        roster = self.roster(round_number)
        out = {k: v for k, v in upload.items() if "metric" in k.tags}
        values = {k.tensor_name: v for k, v in trained.items()}
        template = next(iter(trained), TensorKey("", self.site, round_number, False, ("trained",)))
        for group in self.registered:
            names_by_site = {s: entry["groups"][group] for s, entry in roster["members"].items()
                             if group in entry["groups"]}
            if self.site not in names_by_site:
                log.warning("secure aggregation: round %d's roster does not list %s for %s: "
                            "it joins from a later round", round_number, self.site, group)
                continue
            layout, _ = group_layout(names_by_site)
            lone = sorted(set(self.registered[group]) - set(layout))
            if lone:
                log.warning("secure aggregation: %d %s tensors are uploaded by this site alone and are not sent "
                            "(a sum of one site is its update), e.g. %s", len(lone), group, lone[0])
            if not layout:
                continue
            members = {s: roster["members"][s]["public_key"] for s in names_by_site}
            shapes = {n: shape for names in names_by_site.values() for n, shape in names.items()}
            own = {n: values[n] for n in layout if n in values and not abstain}
            vector = flatten({n: own.get(n, np.zeros(shapes[n])) for n in layout})
            for component, (count_group, _) in roster["components"][group].items():
                weight = 0.0 if abstain or not own else float(counts.get(count_group, 0))
                words = masked(weight * vector, self.site, self.key, members,
                               stream_name(self.federation, round_number, group, component))
                key = TensorKey(message_name(group, component), template.origin, template.round_number,
                                template.report, template.tags)
                out[key] = to_wire(words)
        return out


class RosterBook:
    """The aggregator's registrations and per-round rosters (see the module docstring)."""

    def __init__(self, path: Path | None, components):
        """components: {group: {component: [count group, vote]}}, or a function giving it (read at
        first use: the aggregator knows its model's groups only once it has loaded the model)."""
        self.path = Path(path) if path else None
        self._components = components
        self.registrations: dict = {}
        self.rosters: dict = {}
        if self.path is not None and self.path.exists():
            state = json.loads(self.path.read_text())
            self.registrations = state["registrations"]
            self.rosters = {int(r): v for r, v in state["rosters"].items()}

    @property
    def components(self) -> dict:
        if callable(self._components):
            self._components = self._components()
        return self._components

    def register(self, site: str, named_tensors) -> str | None:
        """Record a site's registration; returns a problem to log, or None."""
        entry = json_of(named_tensors[0])
        previous = self.registrations.get(site)
        self.registrations[site] = {"public_key": entry["public_key"], "groups": entry["groups"]}
        self._save()
        if previous is not None and previous["public_key"] != entry["public_key"]:
            return f"{site} registered a new key: rounds already masked with its old key cannot be unmasked"
        return None

    def answer(self, round_number: int, listed) -> dict:
        """The roster of a round, frozen at its first request once all listed sites registered."""
        roster = self.rosters.get(round_number)
        if roster is None:
            waiting = sorted(set(listed) - set(self.registrations))
            if waiting:
                return {"ready": False, "waiting_for": waiting}
            roster = {s: self.registrations[s] for s in sorted(listed)}
            self.rosters[round_number] = roster
            self._save()
        return {"ready": True, "round": round_number, "members": roster, "components": self.components}

    def members(self, round_number: int, group: str) -> dict:
        """{site: names} of the round's sites that upload `group`."""
        roster = self.rosters.get(round_number, {})
        return {s: entry["groups"][group] for s, entry in roster.items() if group in entry["groups"]}

    def _save(self):
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {"registrations": self.registrations, "rosters": {str(r): v for r, v in self.rosters.items()}}
        write_bytes_atomically(self.path, json.dumps(state, indent=1).encode())
