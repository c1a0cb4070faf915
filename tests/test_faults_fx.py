"""Faults against the real thing: `fx aggregator start` / `fx collaborator start`
processes with the certificates `fx` issued, over gRPC with mutual TLS.

- intruders (a foreign CA, an unlisted name, a stolen name, no client
  certificate, plain TCP, a different plan) are refused on every call of the
  aggregator's gRPC service and get no tensor, while the federation completes;
- everything one site sends on the wire is captured (the site runs in this
  process with OpenFL's real gRPC client, its stub wrapped) and holds only
  model tensors and scalar metrics: no image bytes, file names or labels;
- a site sends NaN / wrongly shaped tensors: its update is left out, the
  global model stays finite;
- `make simulate` interrupted with Ctrl-C exits 130 and leaves no `fx` process.
Crashes, restarts and stragglers: tests/test_faults_fx_restarts.py.
"""
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from tests.test_federation import _processes_under
from tests.tiny_federation import FX_ENV, REPO, FxFederation, of, write_tiny_site_split
from workspace.simulate.processes import FX

pytestmark = pytest.mark.faults
SITES = ["site1", "site2"]
ROUNDS = 3
TASKS = ("aggregated_model_validation", "train")  # each training round's tasks (plan/plan.yaml)


def closed_rounds(rounds: int = ROUNDS) -> list[int]:
    """The rounds the aggregator closes: the training rounds, then the plan's final
    validation round (src/federated/final_validation.py)."""
    return list(range(rounds + 1))


def round_results(rounds: int = ROUNDS, sites=SITES) -> Counter:
    """(round, site, task) of every result a federation that loses nothing takes, once each."""
    return Counter((r, s, t) for r in closed_rounds(rounds) for s in sites
                   for t in (TASKS if r < rounds else TASKS[:1]))


def taken(events: list[dict], kind: str = "accepted") -> Counter:
    return Counter((e["round"], e["site"], e["task"]) for e in of(events, kind))


def assert_each_round_once(events: list[dict], rounds: int = ROUNDS, sites=SITES):
    """Every round closes exactly once, in order, and took each site's results once:
    a duplicate (a round ending twice, a result counted twice) fails."""
    assert [e["round"] for e in of(events, "round_end")] == closed_rounds(rounds)
    assert taken(events) == round_results(rounds, sites), taken(events) - round_results(rounds, sites)


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_fx")
    write_tiny_site_split(root, num_images=40, num_sites=2, labels=("both",), seed=5, test_fraction=0.2)
    return root


# ---- intruders ------------------------------------------------------------------------------
def write_cert(folder: Path, common_name: str, issuer_key, issuer_cert) -> tuple[Path, Path]:
    """A client certificate for common_name signed by the given CA (OpenFL's own crypto helpers)."""
    from openfl.cryptography.ca import sign_certificate
    from openfl.cryptography.io import write_crt, write_key
    from openfl.cryptography.participant import generate_csr

    key, csr = generate_csr(common_name, server=False)
    cert = sign_certificate(csr, issuer_key, issuer_cert.subject)
    folder.mkdir(parents=True, exist_ok=True)
    write_key(key, folder / f"{common_name}.key")
    write_crt(cert, folder / f"{common_name}.crt")
    return folder / f"{common_name}.crt", folder / f"{common_name}.key"


def intruder_client(ws: Path, name: str, cert=None, key=None, tls=True, client_auth=True):
    from openfl.federated import Plan
    from openfl.transport.grpc.aggregator_client import AggregatorGRPCClient

    plan = Plan.parse(plan_config_path=ws / "plan" / "plan.yaml", cols_config_path=ws / "plan" / "cols.yaml")
    net = plan.config["network"]["settings"]
    return AggregatorGRPCClient(
        agg_addr="localhost", agg_port=net["agg_port"], aggregator_uuid=plan.aggregator_uuid,
        federation_uuid=plan.federation_uuid, collaborator_name=name, use_tls=tls,
        require_client_auth=client_auth, root_certificate=str(ws / "cert" / "cert_chain.crt"),
        certificate=str(cert) if cert else None, private_key=str(key) if key else None,
        resend_data_on_reconnection=False)


AGGREGATOR_CALLS = ("Ping", "GetTasks", "GetAggregatedTensor", "SendLocalTaskResults", "InteropRelay")


def every_call(client, tensor_name: str, methods=AGGREGATOR_CALLS) -> dict:
    """Each call of the aggregator's gRPC service made once as `client` (its own stub, no
    retry), asking for or offering the model tensor `tensor_name`:
    {method: (status code, details, response)}; the response is None when refused."""
    from openfl.protocols import aggregator_pb2, base_pb2
    from openfl.protocols.utils import proto_to_datastream
    from openfl.transport.grpc.common import create_header

    header = create_header(sender=client.collaborator_name, receiver=client.aggregator_uuid,
                           federation_uuid=client.federation_uuid, single_col_cert_common_name="")
    offered = base_pb2.NamedTensor(name=tensor_name, round_number=0, tags=["trained", "compressed"],
                                   data_bytes=bytes(16))
    requests = {
        "Ping": lambda: client.stub.Ping(aggregator_pb2.PingRequest(header=header), timeout=60),
        "GetTasks": lambda: client.stub.GetTasks(aggregator_pb2.GetTasksRequest(header=header), timeout=60),
        "GetAggregatedTensor": lambda: client.stub.GetAggregatedTensor(aggregator_pb2.GetAggregatedTensorRequest(
            header=header, tensor_name=tensor_name, round_number=0, report=False, tags=["model"],
            require_lossless=True), timeout=60),
        "SendLocalTaskResults": lambda: client.stub.SendLocalTaskResults(proto_to_datastream(
            aggregator_pb2.TaskResults(header=header, round_number=0, task_name="train", data_size=1,
                                       tensors=[offered])), timeout=60),
        "InteropRelay": lambda: client.stub.InteropRelay(aggregator_pb2.InteropMessage(header=header), timeout=60),
    }
    out = {}
    for method in methods:
        try:
            out[method] = (grpc.StatusCode.OK, "", requests[method]())
        except grpc.RpcError as e:
            out[method] = (e.code(), e.details(), None)
    return out


# ---- the wire of one site ---------------------------------------------------------------------
class Wire:
    """Every request message one site's gRPC stub sends, as (method, serialized bytes),
    and the TaskResults its result streams carry."""

    def __init__(self):
        self.messages: list[tuple[str, bytes]] = []
        self.task_results = []

    def stub_class(self):
        from openfl.protocols import aggregator_pb2_grpc

        wire = self

        class RecordingStub(aggregator_pb2_grpc.AggregatorStub):
            def __init__(self, channel):
                super().__init__(channel)
                for method in ("Ping", "GetTasks", "GetAggregatedTensor", "SendLocalTaskResults"):
                    setattr(self, method, wire.recording(method, getattr(self, method)))

        return RecordingStub

    def recording(self, method, call):
        def send(request, *args, **kwargs):
            if method == "SendLocalTaskResults":  # one TaskResults, streamed in DataStream chunks
                from openfl.protocols import aggregator_pb2

                chunks = list(request)
                self.messages.append((method, b"".join(c.SerializeToString() for c in chunks)))
                self.task_results.append(aggregator_pb2.TaskResults.FromString(b"".join(c.npbytes for c in chunks)))
                return call(iter(chunks), *args, **kwargs)
            self.messages.append((method, request.SerializeToString()))
            return call(request, *args, **kwargs)
        return send


def run_site_in_process(ws: Path, site: str, wire: Wire, monkeypatch):
    """One site as a real Collaborator with OpenFL's real gRPC client (its stub recording)."""
    from openfl.federated import Plan
    from openfl.transport.grpc import aggregator_client

    monkeypatch.chdir(ws)
    monkeypatch.setattr(aggregator_client.aggregator_pb2_grpc, "AggregatorStub", wire.stub_class())
    plan = Plan.parse(plan_config_path=Path("plan/plan.yaml"), data_config_path=Path("plan/data.yaml"))
    plan.get_collaborator(site).run()


def run_sites_recording_site2(fed: FxFederation, monkeypatch) -> Wire:
    """The federation to its end: site1 a real fx process, site2 in this process
    (OpenFL's real gRPC client over mTLS) with its wire recorded."""
    site1 = fed.start_site("site1")
    wire = Wire()
    run_site_in_process(fed.ws, "site2", wire, monkeypatch)
    assert site1.wait(timeout=300) == 0, fed.log("site1.log")[-3000:]
    return wire


def test_intruders_are_refused_and_get_nothing_while_the_federation_completes_and_a_site_sends_only_tensors(
        tiny_split, monkeypatch):
    from openfl.cryptography.ca import generate_root_cert
    from openfl.cryptography.io import read_crt, read_key
    from openfl.protocols import aggregator_pb2

    from src.federated.checkpoint import load_pbuf_weights

    # every call the service offers is tried (a new one in OpenFL shows up here)
    assert AGGREGATOR_CALLS == tuple(m.name for m in aggregator_pb2.DESCRIPTOR.services_by_name["Aggregator"].methods)
    fed = FxFederation(tiny_split, tiny_split / "splits", "ws", SITES, ROUNDS)
    ws = fed.ws
    model, _ = load_pbuf_weights(ws / "save" / "init.pbuf")
    tensor_name = next(iter(model))
    intruders = tiny_split / "intruders"
    foreign_key, foreign_ca = generate_root_cert()
    signing = ws / "cert" / "ca"
    fed_key, fed_ca = read_key(signing / "signing-ca" / "private" / "signing-ca.key"), read_crt(signing / "signing-ca.crt")
    other_plan = tiny_split / "other_plan"
    shutil.copytree(ws, other_plan, symlinks=True)
    plan = yaml.safe_load((other_plan / "plan" / "plan.yaml").read_text())
    plan["task_runner"]["settings"]["overrides"]["training.learning_rate"] = 0.1
    (other_plan / "plan" / "plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
    try:
        fed.start_aggregator()
        cases = {
            "foreign CA": intruder_client(ws, "site1", *write_cert(intruders / "foreign", "site1", foreign_key,
                                                                   foreign_ca)),
            "unlisted name": intruder_client(ws, "site9", *write_cert(intruders / "ours", "site9", fed_key, fed_ca)),
            "stolen name": intruder_client(ws, "site1", ws / "cert" / "client" / "col_site2.crt",
                                           ws / "cert" / "client" / "col_site2.key"),
            "no client certificate": intruder_client(ws, "site1", client_auth=False),
            "plain TCP": intruder_client(ws, "site1", tls=False),
        }
        # a refused name waits up to 5 s per call (OpenFL's delay): the intruders call at once
        with ThreadPoolExecutor(len(cases)) as pool:
            calls = dict(zip(cases, pool.map(lambda c: every_call(c, tensor_name), cases.values())))
        # the same request for a tensor as a site it admits gets the tensor's bytes
        site1 = intruder_client(ws, "site1", ws / "cert" / "client" / "col_site1.crt",
                                ws / "cert" / "client" / "col_site1.key")
        code, _, answer = every_call(site1, tensor_name, ["GetAggregatedTensor"])["GetAggregatedTensor"]
        assert code == grpc.StatusCode.OK and len(answer.tensor.data_bytes) == model[tensor_name].nbytes

        codes = {case: {m: c for m, (c, _, _) in by_method.items()} for case, by_method in calls.items()}
        handshake_fails = dict.fromkeys(AGGREGATOR_CALLS, grpc.StatusCode.UNAVAILABLE)  # no request is read
        # a certificate of the federation with a name it does not admit: refused before any
        # work; InteropRelay exists only in OpenFL's interoperability mode
        not_admitted = {**dict.fromkeys(AGGREGATOR_CALLS, grpc.StatusCode.UNAUTHENTICATED),
                        "InteropRelay": grpc.StatusCode.UNIMPLEMENTED}
        assert codes == {"foreign CA": handshake_fails, "unlisted name": not_admitted,
                         "stolen name": not_admitted, "no client certificate": handshake_fails,
                         "plain TCP": handshake_fails}, codes
        assert all(answer is None for by_method in calls.values() for _, _, answer in by_method.values())
        assert "CN: |site2| collaborator_common_name: |site1|" in calls["stolen name"]["GetAggregatedTensor"][1]

        # A site with a different plan.yaml (a real fx collaborator) stops and says why.
        other = subprocess.run([FX, "collaborator", "start", "-n", "site1"], cwd=other_plan, env=FX_ENV,
                               capture_output=True, text=True, timeout=300)
        assert other.returncode != 0
        assert "plan/plan.yaml differs from the aggregator's" in other.stdout + other.stderr

        wire = run_sites_recording_site2(fed, monkeypatch)
    finally:
        fed.stop()

    events = fed.events()
    assert_each_round_once(events)
    given = Counter((e["round"], e["site"]) for e in of(events, "tasks_sent"))
    assert given == Counter((r, s) for r in closed_rounds() for s in SITES)  # each site's tasks once a round
    served = {e["site"] for e in events if e["event"] in ("tasks_sent", "download", "upload", "accepted")}
    assert served == set(SITES)  # no intruder got a task or a tensor, and none was taken from one
    assert not of(events, "rejected")

    # Privacy: what site2 put on the wire is model tensors and scalar metrics only.
    results = wire.task_results
    assert len(results) == 2 * ROUNDS + 1  # validate + train each round, then the final validation
    for result in results:
        assert result.header.sender == "site2"
        for tensor in result.tensors:
            if "metric" in tensor.tags:
                assert len(tensor.data_bytes) <= 8, tensor.name  # one float
                assert "/" not in tensor.name
            else:
                assert tensor.name in model, tensor.name
                assert len(tensor.data_bytes) == model[tensor.name].nbytes, tensor.name
    sent = b"".join(raw for _, raw in wire.messages)
    site_dir = tiny_split / "splits" / "site2"
    images = [p for p in (tiny_split / "data").rglob("*") if p.suffix in (".jpg", ".png")]
    labels = [p for p in (tiny_split / "data").rglob("*.txt")]
    assert images and labels
    for path in images:
        data = path.read_bytes()
        middle = data[len(data) // 2: len(data) // 2 + 48]
        assert middle not in sent, path.name
        assert path.name.encode() not in sent, path.name
    for path in labels:
        for line in path.read_text().splitlines():
            assert line.encode() not in sent, (path.name, line)
    assert str(site_dir).encode() not in sent and b"manifest" not in sent


# ---- broken updates over the wire -------------------------------------------------------------------
def test_a_site_sending_broken_updates_over_the_wire_is_left_out_and_the_model_stays_finite(
        tiny_split, monkeypatch):
    """site2 (OpenFL's real client over mTLS, in this process) trains for real, then
    sends a det_head kernel with NaN (round 1) or the wrong shape (rounds 2, 3); the
    fx aggregator leaves its update out each time, site1's real process is unaffected.
    (tests/test_faults.py checks the arithmetic of the same scenario in process.)"""
    from src.federated.checkpoint import load_pbuf_weights
    from src.federated.in_process import decode_named_tensors
    from src.federated.task_runner import MultiTaskRunner
    from tests.test_faults import poison

    fed = FxFederation(tiny_split, tiny_split / "splits", "ws_poison", SITES, ROUNDS)
    ws = fed.ws
    broken = {}
    real_train = MultiTaskRunner.train_task

    def train_task(self, col_name, round_num, *args, **kwargs):
        upload, local = real_train(self, col_name, round_num, *args, **kwargs)
        broken[round_num] = poison(upload, round_num)
        return upload, local

    monkeypatch.setattr(MultiTaskRunner, "train_task", train_task)
    try:
        fed.start_aggregator()
        wire = run_sites_recording_site2(fed, monkeypatch)
    finally:
        fed.stop()

    events = fed.events()
    # site2 every training round, once; site1 never
    assert [(e["round"], e["site"], e["task"]) for e in of(events, "rejected")] == \
        [(r, "site2", "train") for r in range(ROUNDS)]
    reasons = [e["reason"] for e in of(events, "rejected")]
    assert broken[0] in reasons[0] and "non-finite" in reasons[0]
    assert all(broken[r] in reasons[r] and "shape" in reasons[r] for r in range(1, ROUNDS))
    assert_each_round_once(events)  # a rejected update was still taken once, then left out of the mean
    init, _ = load_pbuf_weights(ws / "save" / "init.pbuf")
    final, final_round = load_pbuf_weights(ws / "save" / "final.pbuf")
    assert final_round == ROUNDS and all(np.isfinite(v).all() for v in final.values())
    assert any(not np.array_equal(final[n], init[n]) for n in init)  # site1's training went in
    # site2 started every round from the finite global model: all else it sent is finite
    trained = [r for r in wire.task_results if r.task_name == "train"]
    assert len(trained) == ROUNDS
    for result in trained:
        sent = decode_named_tensors(result.tensors)
        assert all(np.isfinite(v).all() for n, v in sent.items() if n != broken[result.round_number])


def test_ctrl_c_stops_simulate_and_leaves_no_fx_process(tmp_path):
    """SIGINT (Ctrl-C) while aggregator and collaborators run: exit 130, no process left."""
    log_path = tmp_path / "simulate.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workspace.simulate", "--rounds", "5", "--sites", "2",
             "--runs-dir", str(tmp_path / "runs"), "--set", "model.input_size=64",
             "--set", "model.width=0.125", "--backbone-init", "scratch"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 600
        while len(_processes_under(tmp_path / "runs")) < 3:  # aggregator + 2 collaborators
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "fx processes never started"
            time.sleep(1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 30  # a killed process leaves /proc once its parent reaped it
    while _processes_under(tmp_path / "runs") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_under(tmp_path / "runs") == []
    assert "interrupted" in log_path.read_text()


# ---- the harness: the aggregator's port, the event log ------------------------------------------------
def test_a_reserved_port_is_taken_by_the_aggregator_s_grpc_server_and_by_no_one_else(tmp_path):
    from concurrent.futures import ThreadPoolExecutor as Pool
    import socket

    from workspace.simulate.processes import PortReservation

    reservation = PortReservation()
    try:
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", reservation.port))
        server = grpc.server(Pool(1))  # binds [::]:port with SO_REUSEPORT, as OpenFL's server does
        assert server.add_insecure_port(f"[::]:{reservation.port}") == reservation.port
        server.stop(0)
    finally:
        reservation.release()


def test_the_event_log_is_read_up_to_its_last_complete_line(tmp_path):
    from workspace.simulate.events import read_events

    log = tmp_path / "events.jsonl"
    log.write_text('{"event": "round_start", "round": 0}\n{"event": "round_end", "rou')  # still being written
    assert read_events(log) == [{"event": "round_start", "round": 0}]
    assert read_events(tmp_path / "none.jsonl") == []
