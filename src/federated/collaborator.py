"""A collaborator that finds out whether the aggregator admits it, and stops when it does not.

Stock OpenFL 1.9 clients retry every refused call forever
(`_resend_data_on_reconnection`), so a site whose plan.yaml differs from the
aggregator's, or whose certificate or name the aggregator refuses, logs
"Failed to send data request ... error code UNKNOWN" every few seconds and
never says why. Before its first task this collaborator pings the aggregator
(with the client's retry switched off) and stops with a message an operator can act
on: the plan differs (OpenFL derives the aggregator and federation UUIDs in
every request header from the plan's hash), or the certificate/name is not
admitted. Each later request for tasks is checked the same way, so a site the
coordinator revokes, or whose certificate it replaces, while the federation runs
stops with the reason too (src/federated/admission.py). An aggregator that is
not up yet, restarting, or admitting this site from the next round is waited
for, as stock does.
It also keeps its tensors in the dict-keyed store of src/federated/tensor_db.py,
and, when the plan asks for secure aggregation, connects the task runner's masked
uploads to the aggregator (src/federated/secure_sums.py) with the site's mask key
kept in `secagg_key_path` (default cert/client/secagg_<site>.key, beside its TLS key).
"""
from __future__ import annotations

import logging
import time

import grpc
from openfl.component import Collaborator

from src.federated.secure_sums import SiteMasking
from src.federated.tensor_db import KeyedTensorDB

log = logging.getLogger(__name__)

# What the OpenFL server (aggregator_server.check_request) and the admission check
# (src/federated/admission.py) say when the header's UUIDs, i.e. the hash of the
# sender's plan, are not the aggregator's.
PLAN_MISMATCH_MARKERS = ("does not match aggregator UUID", "Federation UUID in request header does not match")
# what the aggregator says when this site masks its uploads and the aggregator does not (decoupled.py)
MASKING_OFF_MARKER = "pairwise_masking is off"


class FederationRefused(RuntimeError):
    """The aggregator will never accept this site as it is configured."""


def refusal_reason(error: grpc.RpcError, site: str, federation_uuid: str) -> str | None:
    """An operator's explanation of a refused call, or None if it may be transient."""
    details = error.details() or ""
    if any(marker in details for marker in PLAN_MISMATCH_MARKERS):
        return (f"the aggregator refused site {site}: this site's plan/plan.yaml differs from the "
                f"aggregator's (this plan is federation {federation_uuid}). Use the plan the "
                f"coordinator exported (fx workspace import) and do not edit it. Server said: {details}")
    if MASKING_OFF_MARKER in details:
        return f"the aggregator refused site {site}'s masked uploads. Server said: {details}"
    if error.code() == grpc.StatusCode.UNAUTHENTICATED:
        return (f"the aggregator refused site {site}: its certificate or name is not admitted "
                f"(the certificate's common name must be {site!r}, signed by the federation's CA and the "
                f"one the coordinator signed last for {site!r}, and {site!r} listed in the aggregator's "
                f"plan/cols.yaml). Server said: {details}")
    return None


class SiteCollaborator(Collaborator):
    def __init__(self, *args, admission_timeout_s: float = 3600.0, secagg_key_path: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.secagg_key_path = secagg_key_path or f"cert/client/secagg_{self.collaborator_name}.key"
        # the dict-keyed tensor store (src/federated/tensor_db.py: why)
        self.tensor_db = KeyedTensorDB.from_tensor_db(self.tensor_db)
        self.callbacks.set_tensor_db(self.tensor_db)
        self.admission_timeout_s = float(admission_timeout_s)

    def check_admission(self):
        """Ping until the aggregator answers; raise FederationRefused if it refuses us."""
        self._answered(self.client.ping)

    def _answered(self, call):
        """call() once the aggregator answers it; FederationRefused if it refuses this site.

        The client's own endless retry is off meanwhile: each answer is seen."""
        deadline = time.monotonic() + self.admission_timeout_s
        resend = getattr(self.client, "resend_data_on_reconnection", False)
        self.client.resend_data_on_reconnection = False
        try:
            while True:
                try:
                    return call()
                except grpc.RpcError as e:
                    reason = refusal_reason(e, self.collaborator_name, self.federation_uuid)
                    if reason:
                        log.error(reason)
                        raise FederationRefused(reason) from None
                    if time.monotonic() > deadline:
                        raise FederationRefused(f"no answer from the aggregator for "
                                                f"{self.admission_timeout_s:.0f} s: {e.code()} {e.details()}")
                    log.info("waiting for the aggregator (%s: %s)", e.code(), e.details())
                    self.client.reconnect()
                    time.sleep(2.0)
        finally:
            self.client.resend_data_on_reconnection = resend

    def run(self):
        self.check_admission()
        if getattr(self.task_runner, "pairwise_masking", False):
            self.task_runner.masking = SiteMasking(self.collaborator_name, self.secagg_key_path,
                                                   _Answered(self), self.federation_uuid)
            self.task_runner.masking.register(self.task_runner.upload_shapes())
        get_tasks = self.client.get_tasks
        self.client.get_tasks = lambda: self._answered(get_tasks)  # the stock loop asks here
        super().run()


class _Answered:
    """The client's two calls the masking makes, each retried until answered (SiteCollaborator._answered)."""

    def __init__(self, collaborator: SiteCollaborator):
        self.collaborator = collaborator

    def send_local_task_results(self, *args):
        client = self.collaborator.client
        return self.collaborator._answered(lambda: client.send_local_task_results(*args))

    def get_aggregated_tensor(self, *args):
        client = self.collaborator.client
        return self.collaborator._answered(lambda: client.get_aggregated_tensor(*args))
