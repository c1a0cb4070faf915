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
Then, when the plan asks for them, the defences of docs/privacy.md: each
site's update is bounded per group (`clip_updates`: a norm or `median`,
src/robust_aggregation.py) and/or clipped whole and noised for differential
privacy (`differential_privacy`, src/privacy.py, with uniform site weights and
the epsilon spent so far in the event log, `privacy`). The bounded or noised
values replace the site's values in the tensor store before the plan's
aggregation function averages them.
With `pairwise_masking` (secure aggregation, docs/privacy.md) the sites upload
masked sums instead (src/federated/secure_sums.py): this aggregator hands out
each round's roster, adds up each group's messages, which only then reveal the
group's weighted sum, and averages that through the same aggregation function.
Per-site checks and defences need per-site values, so they are refused with it;
a site checks its own update before masking.
Metrics go through the stock code path (including best-model selection).
"""
from __future__ import annotations

import logging
import os

import numpy as np
import threading

from openfl.utilities import TaskResultKey, TensorKey, change_tags

from src.federated.aggregator import PromptAggregator
from src.federated.secure_sums import REGISTER_TASK, ROSTER, TAGS, RosterBook, group_layout, is_message, \
    json_tensor, message_name
from src.federated.update_checks import update_problem
from src.model.config import task_group_of
from src.privacy import DifferentialPrivacy, check_budget, privatize
from src.robust_aggregation import bound_updates, check_clip
from src.secure_aggregation import SecureAggregationError, from_wire, unflatten, unmasked_sum
from src.task_groups import (groups_of_names, mean_of_component_sums, task_balanced_weights, task_votes,
                             weight_components)

BACKBONE_WEIGHTINGS = ("samples", "task_balanced")
log = logging.getLogger(__name__)


class DecoupledAggregator(PromptAggregator):
    def __init__(self, *args, backbone_weighting: str = "samples", backbone_task_votes: dict | None = None,
                 clip_updates=None, differential_privacy: dict | None = None, pairwise_masking: bool = False,
                 **kwargs):
        if backbone_weighting not in BACKBONE_WEIGHTINGS:
            raise ValueError(f"backbone_weighting must be one of {BACKBONE_WEIGHTINGS}, "
                             f"got {backbone_weighting!r}")
        if backbone_task_votes is not None and backbone_weighting != "task_balanced":
            raise ValueError("backbone_task_votes needs backbone_weighting: task_balanced")
        self.backbone_weighting, self.backbone_task_votes = backbone_weighting, task_votes(backbone_task_votes)
        check_clip(clip_updates)
        self.clip_updates = clip_updates
        self.privacy = DifferentialPrivacy.from_plan(differential_privacy)
        self._noise = np.random.default_rng()  # fresh OS entropy: DP noise must not be reproducible
        if self.privacy is not None:
            self._check_privacy_plan(int(kwargs.get("rounds_to_train", 256)), kwargs.get("assigner"))
        self.rosters, self._groups = None, None
        if pairwise_masking:
            self.rosters = self._roster_book(kwargs.get("persistent_db_path"), kwargs.get("assigner"))
        self._roster_lock = threading.Lock()
        self._outvote_warned = set()  # groups already warned about (_warn_outvoting_impossible)
        super().__init__(*args, **kwargs)

    def _roster_book(self, db_path, assigner) -> RosterBook:
        """Masked sums need per-site values for nothing: refuse the settings that do."""
        statistics = {name: getattr(assigner.get_aggregation_type_for_task(name), "statistic", "mean")
                      for name in getattr(assigner, "tasks", {})}
        refused = {"clip_updates": self.clip_updates is not None, "differential_privacy": self.privacy is not None,
                   f"aggregation statistic {statistics}": any(v != "mean" for v in statistics.values())}
        if any(refused.values()):
            raise ValueError(f"pairwise_masking hides each site's update, which {[k for k, v in refused.items() if v]} "
                             "need: use one or the other (docs/privacy.md)")
        path = os.path.join(os.path.dirname(db_path), "secagg_rosters.json") if db_path else None
        return RosterBook(path, self._roster_components)

    @property
    def groups(self) -> tuple[str, ...]:
        """The federation's task groups: those of the model the plan builds, as its initial
        state holds them (the sites read the same off their model: task_groups.model_groups)."""
        if self._groups is None:
            self._groups = groups_of_names(t.name for t in self.model.tensors)
        return self._groups

    def _roster_components(self) -> dict:
        """{group: {component: [count group, vote]}}: the masked sums each group's mean is formed from."""
        return {g: {c: [count, vote] for c, (count, vote) in
                    weight_components(g, self.backbone_weighting, self.backbone_task_votes, self.groups).items()}
                for g in self.groups}

    def send_local_task_results(self, collaborator_name, round_number, task_name, data_size, named_tensors):
        if task_name != REGISTER_TASK:
            return super().send_local_task_results(collaborator_name, round_number, task_name, data_size,
                                                   named_tensors)
        if self.rosters is None:
            raise ValueError(f"{collaborator_name} registered for masked uploads, but the aggregator's "
                             "pairwise_masking is off: aggregator.settings.pairwise_masking and "
                             "task_runner.settings.pairwise_masking must be the one YAML value")
        with self._roster_lock:
            problem = self.rosters.register(collaborator_name, named_tensors)
        if problem:
            log.warning("secure aggregation: %s", problem)
        self._event("secagg_registered", round=self.round_number, site=collaborator_name, problem=problem)

    def get_aggregated_tensor(self, tensor_name, round_number, report, tags, require_lossless, requested_by):
        if tensor_name != ROSTER or tuple(tags) != TAGS:
            return super().get_aggregated_tensor(tensor_name, round_number, report, tags, require_lossless,
                                                 requested_by)
        if self.rosters is None:
            raise ValueError(f"{requested_by} asked for a roster; this plan has no pairwise_masking")
        with self._roster_lock:
            answer = self.rosters.answer(round_number, self.authorized_cols)
        return json_tensor(ROSTER, self.uuid, round_number, answer)

    def _check_privacy_plan(self, rounds: int, assigner):
        """Refuse (or warn about) a plan whose rounds pass the target epsilon, and a robust
        statistic with differential privacy (its noise is calibrated for the mean)."""
        over = check_budget(self.privacy, rounds)
        if over and self.privacy.on_target == "refuse":
            raise ValueError(f"differential_privacy: {over}")
        if over:
            log.warning("differential_privacy: %s", over)
        robust = {name: getattr(assigner.get_aggregation_type_for_task(name), "statistic", "mean")
                  for name in getattr(assigner, "tasks", {})}
        if any(statistic != "mean" for statistic in robust.values()):
            raise ValueError(f"differential_privacy calibrates its noise for the mean; the plan's tasks "
                             f"aggregate with {robust}")

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
        if self.rosters is not None:
            self._keep_unsent(self._aggregate_masked(task_name, trained))
            return
        sites = [k.owner for k in trained]
        weight = {site: {g: self._group_weight(task_name, site, g) for g in self.groups} for site in sites}
        trained = self._reject_broken_updates(task_name, trained, weight)
        sites = [k.owner for k in trained]
        weight = {site: weight[site] for site in sites}
        if self.backbone_weighting == "task_balanced":
            shared = task_balanced_weights(weight, self.backbone_task_votes)
            for site in sites:
                weight[site]["backbone"] = shared[site]
        if self.privacy is not None:
            weight = {site: {g: 1.0 for g in self.groups} for site in sites}  # bounded influence per site
        self._defend(task_name, trained)
        senders = {}  # aggregated tensor key -> {collaborator: weight}
        for result_key, tensor_keys in trained.items():
            site = result_key.owner
            for tk in tensor_keys:
                agg_key = TensorKey(tk.tensor_name, tk.origin, tk.round_number, tk.report,
                                    change_tags(tk.tags, remove_field=site))
                senders.setdefault(agg_key, {})[site] = weight[site][task_group_of(tk.tensor_name)]
        function = self.assigner.get_aggregation_type_for_task(task_name)
        self._warn_outvoting_impossible(getattr(function, "statistic", "mean"), senders)
        aggregated = set()
        for agg_key, weights in senders.items():
            total = sum(weights.values())
            if total <= 0:
                raise ValueError(f"round {self.round_number}: {agg_key.tensor_name} was sent by "
                                 f"{sorted(weights)}, all reporting 0 training images for its group")
            value = self.tensor_db.get_aggregated_tensor(
                agg_key, {site: w / total for site, w in weights.items()}, aggregation_function=function)
            if self.privacy is not None and agg_key.tensor_name.endswith("moving_variance"):
                value = np.maximum(value, 0.0)  # noise must not make a variance negative
            self._prepare_trained(agg_key.tensor_name, agg_key.origin, agg_key.round_number,
                                  agg_key.report, value)
            aggregated.add(agg_key.tensor_name)
        self._keep_unsent(aggregated)

    def _aggregate_masked(self, task_name: str, trained: dict) -> set:
        """Each group's mean from the round's masked messages; returns the tensor names aggregated.

        A group whose sum cannot be formed (a member sent nothing or a message of the
        wrong length) keeps its previous value this round (`secure_sum_incomplete`)."""
        messages = {}  # (group, component) -> {site: words}
        for result_key, tensor_keys in trained.items():
            site = result_key.owner
            plain = [tk.tensor_name for tk in tensor_keys if not is_message(tk.tensor_name)]
            if plain:
                reason = f"sent {len(plain)} unmasked tensors ({plain[0]}, ...) where the plan asks for masked sums"
                log.warning("round %d: rejected the update of %s: %s", self.round_number, site, reason)
                self._event("rejected", round=self.round_number, site=site, task=task_name, reason=reason)
                continue
            for tk in tensor_keys:
                messages.setdefault(tk.tensor_name, {})[site] = from_wire(self.tensor_db.get_tensor_from_cache(tk))
        weight = {k.owner: {g: self._group_weight(task_name, k.owner, g) for g in self.groups} for k in trained}
        function = self.assigner.get_aggregation_type_for_task(task_name)
        aggregated = set()
        for group, components in self.rosters.components.items():
            members = self.rosters.members(self.round_number, group)  # {site: {tensor: shape}}
            layout, holders = group_layout(members)
            if not layout:
                continue  # no tensor of the group is uploaded by two sites (src/federated/secure_sums.py)
            shapes = {n: self._global_tensor(n).shape for n in layout}
            try:
                sums = {c: unflatten(unmasked_sum(messages.get(message_name(group, c), {}), members), shapes)
                        for c in components}
            except SecureAggregationError as e:
                log.warning("round %d: %s keeps its previous value: %s", self.round_number, group, e)
                self._event("secure_sum_incomplete", round=self.round_number, group=group, reason=str(e))
                continue
            totals = {c: sum(weight[s][count] for s in members) for c, (count, _) in components.items()}
            for name in layout:
                senders = {c: sum(weight[s][count] for s in holders[name]) for c, (count, _) in components.items()}
                mean = mean_of_component_sums({c: sums[c][name] for c in components}, totals, components, senders)
                if mean is None:
                    continue
                self.tensor_db.replace_tensors({TensorKey(name, self.uuid, self.round_number, False, change_tags(
                    ("trained",), add_field="secure_sum")): mean.astype(np.float32)})
                value = self.tensor_db.get_aggregated_tensor(
                    TensorKey(name, self.uuid, self.round_number, False, ("trained",)), {"secure_sum": 1.0},
                    aggregation_function=function)
                self._prepare_trained(name, self.uuid, self.round_number, False, value)
                aggregated.add(name)
            self._event("secure_sum", round=self.round_number, group=group, sites=sorted(members),
                        totals=totals)
        return aggregated

    def _warn_outvoting_impossible(self, statistic: str, senders: dict):
        """A robust statistic over two senders is their mean: say so once per group, as it happens
        with decoupled weights (3 default sites: each head has two senders)."""
        if statistic == "mean":
            return
        for group, count in groups_too_small_to_outvote(senders).items():
            if group not in self._outvote_warned:
                self._outvote_warned.add(group)
                log.warning("round %d: %s has %d senders: a %s of %d values is their mean, so it cannot "
                            "outvote a bad site (docs/privacy.md)", self.round_number, group, count, statistic, count)
                self._event("defence_ineffective", round=self.round_number, group=group, senders=count,
                            statistic=statistic)

    def _keep_unsent(self, aggregated: set):
        """Carry every tensor nobody sent (or no sum could be formed for) into the next round."""
        for named in self.model.tensors:
            if named.name in aggregated:
                continue
            previous = self._global_tensor(named.name)
            if previous is None:
                raise RuntimeError(f"round {self.round_number}: no global value of {named.name} to keep")
            self._prepare_trained(named.name, self.uuid, self.round_number, False, previous)

    def _defend(self, task_name: str, trained: dict):
        """Bound and/or noise each site's trained values in the tensor store (see the module docstring)."""
        if self.clip_updates is None and self.privacy is None:
            return
        keys = {k.owner: {tk.tensor_name: tk for tk in tensor_keys} for k, tensor_keys in trained.items()}
        values = {site: {name: self.tensor_db.get_tensor_from_cache(tk) for name, tk in named.items()}
                  for site, named in keys.items()}
        start = {name: self._global_tensor(name) for named in values.values() for name in named}
        if self.clip_updates is not None:
            values, norms, scales = bound_updates(values, start, self.clip_updates, task_group_of)
            for site, groups in scales.items():
                for group, scale in groups.items():
                    if scale < 1.0:
                        self._event("clipped", round=self.round_number, site=site, group=group,
                                    norm=norms[site][group], scale=scale)
        if self.privacy is not None:
            values, norms = privatize(values, start, self.privacy, self._noise)
            epsilon = self.privacy.epsilon(self.round_number + 1)
            log.info("round %d: differential privacy epsilon %.2f (delta %g) after %d rounds",
                     self.round_number, epsilon, self.privacy.delta, self.round_number + 1)
            self._event("privacy", round=self.round_number, task=task_name, epsilon=epsilon,
                        delta=self.privacy.delta, noise_multiplier=self.privacy.noise_multiplier,
                        clip_norm=self.privacy.clip_norm, update_norms=norms)
        for site, named in keys.items():
            self.tensor_db.replace_tensors({tk: values[site][name] for name, tk in named.items()})


def groups_too_small_to_outvote(senders: dict) -> dict:
    """{group: senders} of the groups whose tensors have fewer than 3 senders, where a median or
    trimmed mean is the mean. senders: {tensor key: {site: weight}}."""
    counts = {}
    for key, weights in senders.items():
        group = task_group_of(key.tensor_name)
        counts[group] = max(counts.get(group, 0), len(weights))
    return {group: count for group, count in sorted(counts.items()) if count < 3}
