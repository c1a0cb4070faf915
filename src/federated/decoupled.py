"""Group-wise aggregation of decoupled uploads (the aggregator named in plan.yaml).

Stock OpenFL 1.9 aggregates a training task by walking the tensor list of the
*first* collaborator and insists that every collaborator sent every tensor
(TensorDB.get_aggregated_tensor returns None otherwise). With decoupled
per-task weights a classification-only site sends backbone + cls_head only,
a detection-only site no cls_head, and in `frozen` mode nobody sends the
backbone. This aggregator, for the trained tensors of a task:
- averages each tensor over exactly the sites that sent it, through the plan's
  aggregation function (the OpenFL AggregationFunction interface, e.g.
  src.federated.aggregation.ServerStepAverage), with each site weighted by the
  `samples_<group>` metric it reported for that tensor's group, i.e. by how
  many images taught that group (its data_size when a runner reports none);
- carries every tensor nobody sent this round into the next round unchanged,
  so a group nobody trained keeps its previous global value and the global
  model stays complete (best/last.pbuf, the next round's downloads).
`backbone_weighting: task_balanced` (plan, aggregator settings) weights the
shared backbone so that each task gets a vote instead of each image
(src/task_groups.py:task_balanced_weights; `backbone_task_votes`, e.g.
{boxes: 3, class: 1}, sets the votes, equal by default); `samples` uses the
backbone's own image counts like every other group.
Before averaging, each site's whole update is checked
(src/federated/update_checks.py): one with NaN/Inf, a wrong shape, an unknown
tensor or a bogus sample count is left out of that round, with the reason in
the log and the event log (`rejected`), instead of corrupting the model.
Metrics go through the stock code path (including best-model selection).
"""
from __future__ import annotations

import logging

from openfl.utilities import TaskResultKey, TensorKey, change_tags

from src.federated.aggregator import PromptAggregator
from src.federated.update_checks import update_problem
from src.model.config import TASK_GROUPS, task_group_of
from src.task_groups import task_balanced_weights, task_votes

BACKBONE_WEIGHTINGS = ("samples", "task_balanced")
log = logging.getLogger(__name__)


class DecoupledAggregator(PromptAggregator):
    def __init__(self, *args, backbone_weighting: str = "samples", backbone_task_votes: dict | None = None,
                 **kwargs):
        if backbone_weighting not in BACKBONE_WEIGHTINGS:
            raise ValueError(f"backbone_weighting must be one of {BACKBONE_WEIGHTINGS}, "
                             f"got {backbone_weighting!r}")
        if backbone_task_votes is not None and backbone_weighting != "task_balanced":
            raise ValueError("backbone_task_votes needs backbone_weighting: task_balanced")
        self.backbone_weighting, self.backbone_task_votes = backbone_weighting, task_votes(backbone_task_votes)
        super().__init__(*args, **kwargs)

    def _compute_validation_related_task_metrics(self, task_name) -> dict:
        done = [c for c in self.assigner.get_collaborators_for_task(task_name, self.round_number)
                if c in self.collaborators_done]
        keys = [TaskResultKey(task_name, c, self.round_number) for c in done]
        results = {k: self.collaborator_tasks_results[k] for k in keys}
        trained = {k: [t for t in v if "trained" in t.tags] for k, v in results.items()}
        if not any(trained.values()):
            return super()._compute_validation_related_task_metrics(task_name)
        # The stock method handles the metrics; the trained tensors are ours.
        for k in keys:
            self.collaborator_tasks_results[k] = [t for t in results[k] if "trained" not in t.tags]
        try:
            logs = super()._compute_validation_related_task_metrics(task_name)
        finally:
            self.collaborator_tasks_results.update(results)
        self._aggregate_by_group(task_name, trained)
        return logs

    def _group_weight(self, task_name: str, collaborator: str, group: str) -> float:
        reported = self.tensor_db.get_tensor_from_cache(
            TensorKey(f"samples_{group}", self.uuid, self.round_number, True, ("metric", collaborator)))
        if reported is not None:
            return float(reported)
        return float(self.collaborator_task_weight[TaskResultKey(task_name, collaborator, self.round_number)])

    def _global_tensor(self, name: str):
        return self.tensor_db.get_tensor_from_cache(TensorKey(name, self.uuid, self.round_number, False, ("model",)))

    def _reject_broken_updates(self, task_name: str, trained: dict, weight: dict) -> dict:
        """trained without the updates that must not be averaged (logged as `rejected`)."""
        shapes = {t.name: self._global_tensor(t.name).shape for t in self.model.tensors}
        kept = {}
        for result_key, tensor_keys in trained.items():
            site = result_key.owner
            update = {tk.tensor_name: self.tensor_db.get_tensor_from_cache(tk) for tk in tensor_keys}
            sent_groups = {task_group_of(name) for name in update if name in shapes}
            problem = update_problem(update, shapes, {g: weight[site][g] for g in sent_groups})
            if problem is None:
                kept[result_key] = tensor_keys
                continue
            log.warning("round %d: rejected the update of %s: %s", self.round_number, site, problem)
            self._event("rejected", round=self.round_number, site=site, task=task_name, reason=problem)
        return kept

    def _aggregate_by_group(self, task_name: str, trained: dict):
        sites = [k.owner for k in trained]
        weight = {site: {g: self._group_weight(task_name, site, g) for g in TASK_GROUPS} for site in sites}
        trained = self._reject_broken_updates(task_name, trained, weight)
        sites = [k.owner for k in trained]
        weight = {site: weight[site] for site in sites}
        if self.backbone_weighting == "task_balanced":
            shared = task_balanced_weights(weight, self.backbone_task_votes)
            for site in sites:
                weight[site]["backbone"] = shared[site]
        senders = {}  # aggregated tensor key -> {collaborator: weight}
        for result_key, tensor_keys in trained.items():
            site = result_key.owner
            for tk in tensor_keys:
                agg_key = TensorKey(tk.tensor_name, tk.origin, tk.round_number, tk.report,
                                    change_tags(tk.tags, remove_field=site))
                senders.setdefault(agg_key, {})[site] = weight[site][task_group_of(tk.tensor_name)]
        function = self.assigner.get_aggregation_type_for_task(task_name)
        aggregated = set()
        for agg_key, weights in senders.items():
            total = sum(weights.values())
            if total <= 0:
                raise ValueError(f"round {self.round_number}: {agg_key.tensor_name} was sent by "
                                 f"{sorted(weights)}, all reporting 0 training images for its group")
            value = self.tensor_db.get_aggregated_tensor(
                agg_key, {site: w / total for site, w in weights.items()}, aggregation_function=function)
            self._prepare_trained(agg_key.tensor_name, agg_key.origin, agg_key.round_number,
                                  agg_key.report, value)
            aggregated.add(agg_key.tensor_name)
        for named in self.model.tensors:
            if named.name in aggregated:
                continue
            previous = self._global_tensor(named.name)
            if previous is None:
                raise RuntimeError(f"round {self.round_number}: no global value of {named.name} to keep")
            self._prepare_trained(named.name, self.uuid, self.round_number, False, previous)
