"""An OpenFL federation inside one Python process: the real Aggregator and
Collaborator classes from a real plan, talking through direct calls instead
of gRPC. For fast tests and experiments of everything above the transport;
`make simulate` and the end-to-end test run the real `fx` processes with TLS.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

from openfl.federated import Plan
from openfl.pipelines import NoCompressionPipeline
from openfl.protocols import utils


class InProcessClient:
    """The four calls a Collaborator makes on its aggregator client, made directly.

    `uploads` keeps what this site sent per (round, task), decoded, so tests can
    check aggregation against the sites' actual uploads.
    """

    def __init__(self, aggregator, collaborator_name: str, on_round_end=None):
        self.aggregator = aggregator
        self.name = collaborator_name
        self.uploads: dict[tuple[int, str], dict] = {}
        self.on_round_end = on_round_end

    def ping(self):
        return None

    def get_tasks(self):
        return self.aggregator.get_tasks(self.name)

    def get_aggregated_tensor(self, tensor_name, round_number, report, tags, require_lossless):
        return self.aggregator.get_aggregated_tensor(tensor_name, round_number, report, tuple(tags),
                                                     require_lossless, self.name)

    def send_local_task_results(self, round_number, task_name, data_size=None, named_tensors=None):
        decoded = decode_named_tensors(named_tensors)
        self.uploads[(round_number, task_name)] = {"data_size": data_size, "tensors": decoded}
        before = self.aggregator.round_number
        self.aggregator.send_local_task_results(self.name, round_number, task_name, data_size,
                                                named_tensors)
        if self.on_round_end is not None and self.aggregator.round_number != before:
            self.on_round_end(self.aggregator, before)  # this upload closed round `before`


def decode_named_tensors(named_tensors) -> dict:
    """NamedTensor protos -> {name: array}. (openfl 1.9's deconstruct_proto unpacks
    the 3-tuple of model_proto_to_bytes_and_metadata into 2 and raises.) A tensor that
    carries JSON instead (no transformer metadata, e.g. a secure-aggregation
    registration) is kept as its bytes."""
    data, metadata, _ = utils.model_proto_to_bytes_and_metadata(SimpleNamespace(tensors=named_tensors))
    pipeline = NoCompressionPipeline()
    return {name: pipeline.backward(data=data[name], transformer_metadata=metadata[name]) if metadata[name]
            else data[name] for name in data}


def run_federation(workspace: Path, on_round_end=None) -> tuple[object, dict]:
    """Initialise and run the federation described by workspace/plan/*.yaml.

    Must be called with the workspace as the current directory (as `fx` is).
    on_round_end(aggregator, round) is called in the thread of the site whose upload
    closed that round (the next round cannot close before it returns), e.g. to
    evaluate `aggregator.global_tensors()`, the aggregate of that round.
    Returns the aggregator and the per-site clients (with their uploads; each
    client's `collaborator` is the site's Collaborator, holding its task runner).
    """
    plan = Plan.parse(plan_config_path=Path("plan/plan.yaml"), cols_config_path=Path("plan/cols.yaml"),
                      data_config_path=Path("plan/data.yaml"))
    first = plan.authorized_cols[0]
    runner = plan.get_task_runner(plan.get_data_loader(first))
    settings = plan.config["aggregator"]["settings"]
    for key in ("init_state_path", "best_state_path", "last_state_path", "persistent_db_path"):
        if settings.get(key):
            Path(settings[key]).parent.mkdir(parents=True, exist_ok=True)
    init_path = settings["init_state_path"]
    plan.save_model_to_state_file(runner.get_tensor_dict(False), 0, init_path)

    aggregator = plan.get_aggregator()
    clients, collaborators = {}, []
    for name in plan.authorized_cols:
        site_plan = Plan.parse(plan_config_path=Path("plan/plan.yaml"),
                               cols_config_path=Path("plan/cols.yaml"),
                               data_config_path=Path("plan/data.yaml"))
        clients[name] = InProcessClient(aggregator, name, on_round_end)
        clients[name].collaborator = site_plan.get_collaborator(name, client=clients[name])
        collaborators.append(clients[name].collaborator)
    # One site's task at a time: TF 2.20 graph functions run from several threads of one
    # process at once can collide on grappler's per-step temporary variables
    # (AlreadyExistsError ".../AddOpsRewrite_add_16/tmp_var", seen with three sites
    # training). Real sites are separate processes; on this CPU each task uses every
    # core anyway, so little is lost.
    task_lock = threading.Lock()
    for collaborator in collaborators:
        collaborator.do_task = _serialized(collaborator.do_task, task_lock)
    errors = []

    def run(collaborator):
        try:
            collaborator.run()
        except BaseException as e:  # surfaced in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in collaborators]
    for t in threads:
        t.start()
    # A site that fails leaves the others waiting for its round forever: stop at
    # the first error (the threads are daemons) instead of joining them all.
    while not errors and any(t.is_alive() for t in threads):
        time.sleep(0.2)
    if errors:
        raise errors[0]
    return aggregator, clients


def _serialized(do_task, lock):
    def run(task, round_number):
        with lock:
            return do_task(task, round_number)
    return run
