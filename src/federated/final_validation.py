"""One validation-only round after the last training round, so the last aggregate can be best.

OpenFL 1.9 scores a global model at the start of the round that trains it
further (`aggregated_model_validation`), so the aggregate of the last
training round is never validated and never a candidate for best.pbuf: a
7-round federation picks its best model among the first 6 aggregates. With
`final_validation_tasks` set (aggregator settings), the aggregator runs one
more round in which the sites only run those tasks on the last aggregate;
OpenFL's own best-model logic then considers it like any other round.

`FinalValidationAssigner` is the plan's assigner seen through that extra
round: rounds before it are the plan's assigner's, the extra round gives each
site the validation tasks it had in the last training round and nothing else.
"""
from __future__ import annotations


class FinalValidationAssigner:
    def __init__(self, assigner, training_rounds: int, tasks: list[str]):
        known = set(assigner.get_all_tasks_for_round(training_rounds - 1))
        unknown = [t for t in tasks if t not in known]
        if unknown or not tasks:
            raise ValueError(f"final_validation_tasks {tasks!r}: each must be a task of the plan's "
                             f"assigner ({sorted(known)})")
        self.assigner = assigner
        self.training_rounds = int(training_rounds)
        self.tasks = list(tasks)

    def __getattr__(self, name):
        # everything else (tasks, is_task_group_evaluation, aggregation types): the plan's assigner
        return getattr(self.assigner, name)

    def is_validation_only(self, round_number: int) -> bool:
        """True for the extra round (it trains nothing and aggregates no model)."""
        return round_number >= self.training_rounds

    def _keep(self, tasks):
        return [t for t in tasks if (t if isinstance(t, str) else t.name) in self.tasks]

    def get_tasks_for_collaborator(self, collaborator_name, round_number):
        if not self.is_validation_only(round_number):
            return self.assigner.get_tasks_for_collaborator(collaborator_name, round_number)
        return self._keep(self.assigner.get_tasks_for_collaborator(collaborator_name, self.training_rounds - 1))

    def get_collaborators_for_task(self, task_name, round_number):
        if not self.is_validation_only(round_number):
            return self.assigner.get_collaborators_for_task(task_name, round_number)
        if task_name not in self.tasks:
            return []
        return self.assigner.get_collaborators_for_task(task_name, self.training_rounds - 1)

    def get_all_tasks_for_round(self, round_number):
        if not self.is_validation_only(round_number):
            return self.assigner.get_all_tasks_for_round(round_number)
        return self._keep(self.assigner.get_all_tasks_for_round(self.training_rounds - 1))
