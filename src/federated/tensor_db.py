"""OpenFL's TensorDB with the same interface, kept in a dict instead of a DataFrame.

Why: OpenFL 1.9's TensorDB holds every tensor of every round in a pandas
DataFrame; each lookup filters the whole frame on five columns and each insert
concatenates a new frame, so one round's aggregation (a few hundred tensors x
sites, each looked up and cached several times) cost 8-38 s per round end on
this CPU even for a tiny model, and grew with the rounds kept. Keyed by the
TensorKey fields, a lookup or insert is a dict operation.

One difference: a metric (tag `metric`) some sites do not report is averaged over
the sites that do (their weights renormalized), where the stock class returns None and
the aggregator's float() of it stops the round: sites holding different label kinds
report different label counts (e.g. active learning's per-task `al_labeled_<task>`).
Otherwise semantics are kept from the stock class (tests/test_tensor_db.py runs both on the
same calls): the first value cached under a key is the
one returned (the stock lookup takes the first matching row); `clean_up` keeps
the last `remove_older_than` rounds plus every `report` tensor; aggregation
functions get the same `db_iterator` rows (newest round first), and a
privileged one the DataFrame it expects. The aggregator and the collaborator
swap it in at construction (src/federated/aggregator.py, collaborator.py).
"""
from __future__ import annotations

import logging
import threading
from typing import Iterator, Optional

import numpy as np
import pandas as pd
from openfl.databases.tensor_db import TensorDB
from openfl.databases.utilities import ROUND_PLACEHOLDER, _retrieve, _search, _store
from openfl.utilities import LocalTensor, TensorKey, change_tags

log = logging.getLogger(__name__)
COLUMNS = ("tensor_name", "origin", "round", "report", "tags")


def _key(tensor_key) -> tuple:
    name, origin, fl_round, report, tags = tensor_key
    return str(name), str(origin), int(fl_round), bool(report), tuple(tags)


class KeyedTensorDB(TensorDB):
    def __init__(self, rows: dict | None = None) -> None:  # noqa: D107 (no DataFrame: see module)
        self._rows: dict[tuple, np.ndarray] = dict(rows or {})
        self.mutex = threading.Lock()

    @classmethod
    def from_tensor_db(cls, db: TensorDB) -> "KeyedTensorDB":
        """The rows a stock TensorDB already holds (e.g. the initial model), first value per key."""
        if isinstance(db, KeyedTensorDB):
            return db
        rows = {}
        for _, row in db.tensor_db.iterrows():
            rows.setdefault(_key([row[c] for c in COLUMNS]), row["nparray"])
        return cls(rows)

    @property
    def tensor_db(self) -> pd.DataFrame:
        """A DataFrame snapshot in the stock layout (for privileged aggregation functions)."""
        with self.mutex:
            items = list(self._rows.items())
        frame = pd.DataFrame([[*key, value] for key, value in items], columns=[*COLUMNS, "nparray"])
        frame.store = _store.__get__(frame)
        frame.retrieve = _retrieve.__get__(frame)
        frame.search = _search.__get__(frame)
        return frame

    def _bind_convenience_methods(self):
        """(The snapshot of `tensor_db` comes with them.)"""

    def __repr__(self) -> str:
        return f"KeyedTensorDB with {len(self._rows)} tensors"

    def __len__(self) -> int:
        return len(self._rows)

    def clean_up(self, remove_older_than: int = 1) -> None:
        if remove_older_than < 0:
            return
        with self.mutex:
            rounds = sorted({key[2] for key in self._rows})
            if not rounds:
                return
            current = rounds[-1]
            if current == ROUND_PLACEHOLDER and len(rounds) > 1:
                current = rounds[-2]
            self._rows = {k: v for k, v in self._rows.items() if k[2] > current - remove_older_than or k[3]}

    def cache_tensor(self, tensor_key_dict) -> None:
        with self.mutex:
            for tensor_key, nparray in tensor_key_dict.items():
                self._rows.setdefault(_key(tensor_key), nparray)

    def replace_tensors(self, tensor_key_dict) -> None:
        """Overwrite stored values (cache_tensor keeps the first value of a key), e.g. a
        site's update after the aggregator bounded or noised it."""
        with self.mutex:
            for tensor_key, nparray in tensor_key_dict.items():
                self._rows[_key(tensor_key)] = nparray

    def get_tensor_from_cache(self, tensor_key) -> Optional[np.ndarray]:
        value = self._rows.get(_key(tensor_key))
        return None if value is None else np.asarray(value)

    def _items(self) -> list:
        with self.mutex:
            return list(self._rows.items())

    def get_tensors_by_filter(self, custom_filter=None) -> dict:
        out = {}
        for key, value in self._items():
            row = dict(zip(COLUMNS, key), nparray=value)
            if custom_filter is None or custom_filter(row):
                out[TensorKey(*key)] = np.asarray(value)
        return out

    def get_aggregated_tensor(self, tensor_key, collaborator_weight_dict: dict, aggregation_function):
        if collaborator_weight_dict:
            total = sum(collaborator_weight_dict.values())
            assert abs(1.0 - total) < 0.01, f"Collaborator weights do not sum to 1.0: {collaborator_weight_dict}"
        tensor_name, origin, fl_round, report, tags = tensor_key
        cached = self.get_tensor_from_cache(tensor_key)
        if cached is not None:
            return cached  # (the stock class returns (array, {}) here, on which float() raises)
        local_tensors = []
        for col, weight in collaborator_weight_dict.items():
            value = self._rows.get(_key((tensor_name, origin, fl_round, report, change_tags(tags, add_field=col))))
            if value is None and "metric" in tags:
                continue  # a metric only some sites report (a label kind they hold): their mean
            if value is None:
                log.warning("no %s from collaborator %s in round %s: not aggregated", tensor_name, col, fl_round)
                return None
            local_tensors.append(LocalTensor(col_name=col, tensor=value, weight=weight))
        if not local_tensors:
            return None
        reported = sum(t.weight for t in local_tensors)
        if reported < sum(collaborator_weight_dict.values()):
            local_tensors = [LocalTensor(t.col_name, t.tensor, t.weight / reported) for t in local_tensors]
        if getattr(aggregation_function, "_privileged", False):
            frame = self.tensor_db
            agg = aggregation_function(local_tensors, frame, tensor_name, fl_round, tags)
        else:
            agg = aggregation_function(local_tensors, self._iterate(), tensor_name, fl_round, tags)
        self.cache_tensor({tensor_key: agg})
        return np.asarray(agg)

    def _iterate(self, order_by: str = "round", ascending: bool = False) -> Iterator[dict]:
        """Rows as dicts (round, nparray, tensor_name, tags), sorted by `order_by`."""
        rows = [dict(zip(COLUMNS, key), nparray=value) for key, value in self._items()]
        rows.sort(key=lambda row: row[order_by], reverse=not ascending)
        yield from rows
