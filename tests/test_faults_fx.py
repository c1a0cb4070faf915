"""Faults against the real thing: `fx aggregator start` / `fx collaborator start`
processes with the certificates `fx` issued, over gRPC with mutual TLS.

- intruders (a foreign CA, an unlisted name, a stolen name, no client
  certificate, plain TCP, a different plan) are refused and get no tensor,
  while the federation completes;
- everything one site sends on the wire is captured (the site runs in this
  process with OpenFL's real gRPC client, its stub wrapped) and holds only
  model tensors and scalar metrics: no image bytes, file names or labels;
- the aggregator is SIGKILLed mid-round and restarted with the documented
  command: the federation resumes from the last completed round and finishes;
- a collaborator is SIGKILLed mid-round: the default policy waits for its
  restart, a cutoff-time policy closes the round without it and it rejoins;
- a site sends NaN / wrongly shaped tensors: its update is left out, the
  global model stays finite;
- `make simulate` interrupted with Ctrl-C exits 130 and leaves no `fx` process.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from tests.test_federation import _processes_under
from tests.tiny_federation import REPO, TINY, write_tiny_site_split
from workspace.simulate.fx_workspace import EVENT_LOG, certify, prepare_workspace, workspace_values
from workspace.simulate.plan_edits import edit_plan
from workspace.simulate.processes import FX, Children, free_port, wait_for_port

pytestmark = pytest.mark.faults
SITES = ["site1", "site2"]
ROUNDS = 3


def closed_rounds(rounds: int = ROUNDS) -> list[int]:
    """The rounds the aggregator closes: the training rounds, then the plan's final
    validation round (src/federated/final_validation.py)."""
    return list(range(rounds + 1))
FX_ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
          "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def make_workspace(root: Path, split_dir: Path, name: str, plan_sections: dict | None = None,
                   rounds: int = ROUNDS) -> Path:
    """A certified OpenFL workspace for the tiny two-site federation (as `make simulate`
    makes it), with `plan_sections` added to the repository's plan."""
    plan = {**yaml.safe_load((REPO / "plan" / "plan.yaml").read_text()), **(plan_sections or {})}
    # the shipped backbone fits the default model only; one pass over a tiny site's images
    # an epoch: these scenarios are about faults, not steps
    plan = edit_plan(plan, {"task_runner.settings.backbone_init": "scratch",
                            "data_loader.settings.repeat_to_batches": None,
                            **workspace_values(rounds, free_port())}, overrides={"seed": 0, **TINY})
    ws = root / name
    prepare_workspace(ws, plan, split_dir)
    certify(ws, SITES, split_dir.name, root / f"{name}-setup.log", FX_ENV)
    return ws


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_fx")
    write_tiny_site_split(root, num_images=40, num_sites=2, labels=("both",), seed=5, test_fraction=0.2)
    return root


def events_of(ws: Path) -> list[dict]:
    path = ws / EVENT_LOG
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def start_aggregator(children: Children, ws: Path, log_name: str = "aggregator.log"):
    port = yaml.safe_load((ws / "plan" / "plan.yaml").read_text())["network"]["settings"]["agg_port"]
    proc = children.start(log_name, [FX, "aggregator", "start"], ws, ws / log_name, FX_ENV)
    wait_for_port(port, proc, ws / log_name)
    return proc


def start_site(children: Children, ws: Path, site: str, log_name: str | None = None):
    log_name = log_name or f"{site}.log"
    return children.start(log_name, [FX, "collaborator", "start", "-n", site], ws, ws / log_name, FX_ENV)


def round_started_for_all(ws: Path, rnd: int) -> bool:
    return {e["site"] for e in events_of(ws) if e["event"] == "tasks_sent" and e["round"] == rnd} == set(SITES)


def wait_until(condition, timeout_s: float, what: str, procs=()):
    deadline = time.monotonic() + timeout_s
    while not condition():
        for name, proc in procs:
            assert proc.poll() in (None, 0), f"{name} exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


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


def attempt(client) -> grpc.RpcError | None:
    """Ask for work and for a model tensor; the error the first refused call raised."""
    for call in (client.get_tasks,
                 lambda: client.get_aggregated_tensor("cls_out/kernel", 0, False, ("model",), True)):
        try:
            call()
        except grpc.RpcError as e:
            return e
    return None


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


def run_sites_recording_site2(children: Children, ws: Path, monkeypatch) -> Wire:
    """The federation to its end: site1 a real fx process, site2 in this process
    (OpenFL's real gRPC client over mTLS) with its wire recorded."""
    site1 = start_site(children, ws, "site1")
    wire = Wire()
    run_site_in_process(ws, "site2", wire, monkeypatch)
    assert site1.wait(timeout=300) == 0
    return wire


def test_intruders_are_refused_and_get_nothing_while_the_federation_completes_and_a_site_sends_only_tensors(
        tiny_split, monkeypatch):
    from openfl.cryptography.ca import generate_root_cert
    from openfl.cryptography.io import read_crt, read_key

    ws = make_workspace(tiny_split, tiny_split / "splits", "ws")
    intruders = tiny_split / "intruders"
    foreign_key, foreign_ca = generate_root_cert()
    signing = ws / "cert" / "ca"
    fed_key, fed_ca = read_key(signing / "signing-ca" / "private" / "signing-ca.key"), read_crt(signing / "signing-ca.crt")
    cases = {
        "foreign CA": intruder_client(ws, "site1", *write_cert(intruders / "foreign", "site1", foreign_key, foreign_ca)),
        "unlisted name": intruder_client(ws, "site9", *write_cert(intruders / "ours", "site9", fed_key, fed_ca)),
        "stolen name": intruder_client(ws, "site1", ws / "cert" / "client" / "col_site2.crt",
                                       ws / "cert" / "client" / "col_site2.key"),
        "no client certificate": intruder_client(ws, "site1", client_auth=False),
        "plain TCP": intruder_client(ws, "site1", tls=False),
    }
    other_plan = tiny_split / "other_plan"
    shutil.copytree(ws, other_plan, symlinks=True)
    plan = yaml.safe_load((other_plan / "plan" / "plan.yaml").read_text())
    plan["task_runner"]["settings"]["overrides"]["training.learning_rate"] = 0.1
    (other_plan / "plan" / "plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))

    children = Children()
    try:
        start_aggregator(children, ws)
        refused = {name: attempt(client) for name, client in cases.items()}
        codes = {name: e.code() if e else None for name, e in refused.items()}
        assert codes["foreign CA"] == codes["no client certificate"] == codes["plain TCP"] == \
            grpc.StatusCode.UNAVAILABLE, codes  # the TLS handshake fails: no request is read
        assert codes["unlisted name"] == codes["stolen name"] == grpc.StatusCode.UNAUTHENTICATED, codes
        assert "CN: |site2| collaborator_common_name: |site1|" in refused["stolen name"].details()

        # A site with a different plan.yaml (a real fx collaborator) stops and says why.
        other = subprocess.run([FX, "collaborator", "start", "-n", "site1"], cwd=other_plan, env=FX_ENV,
                               capture_output=True, text=True, timeout=300)
        assert other.returncode != 0
        assert "plan/plan.yaml differs from the aggregator's" in other.stdout + other.stderr

        wire = run_sites_recording_site2(children, ws, monkeypatch)
    finally:
        children.kill_all()

    events = events_of(ws)
    assert sorted(e["round"] for e in events if e["event"] == "round_end") == closed_rounds()
    served = {e["site"] for e in events if e["event"] in ("tasks_sent", "download", "upload")}
    assert served == set(SITES)  # no intruder got a task or a tensor, and none was taken from one
    assert not [e for e in events if e["event"] == "rejected"]

    # Privacy: what site2 put on the wire is model tensors and scalar metrics only.
    from src.federated.checkpoint import load_pbuf_weights

    model, _ = load_pbuf_weights(ws / "save" / "init.pbuf")
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


# ---- aggregator crash -----------------------------------------------------------------------------
def test_aggregator_killed_mid_round_resumes_from_the_last_completed_round(tiny_split):
    ws = make_workspace(tiny_split, tiny_split / "splits", "ws_crash")
    children = Children()
    try:
        agg = start_aggregator(children, ws)
        sites = [(s, start_site(children, ws, s)) for s in SITES]
        # mid-round: both sites got their round-1 tasks and are working on them
        wait_until(lambda: round_started_for_all(ws, 1), 600, "round 1 to start", sites)
        os.killpg(agg.pid, signal.SIGKILL)
        agg.wait(timeout=30)
        assert not any(e["event"] == "round_end" and e["round"] == 1 for e in events_of(ws))

        start_aggregator(children, ws, "aggregator-restarted.log")  # the documented command, again
        for name, proc in sites:
            assert proc.wait(timeout=600) == 0, (ws / f"{name}.log").read_text()[-3000:]
    finally:
        children.kill_all()

    events = events_of(ws)
    ends = [e["round"] for e in events if e["event"] == "round_end"]
    assert ends == closed_rounds(), ends  # no round lost or repeated, numbers continue
    starts = [i for i, e in enumerate(events) if e["event"] == "model"]  # one per aggregator start
    assert len(starts) == 2
    restarted = events[starts[1]:]
    assert next(e for e in restarted if e["event"] == "round_start")["round"] == 1
    log = (ws / "aggregator-restarted.log").read_text()
    assert "Recovered state of aggregator" in log or "Recovering" in log
    from src.federated.checkpoint import load_pbuf_weights

    final, final_round = load_pbuf_weights(ws / "save" / "final.pbuf")
    assert final_round == ROUNDS and all(np.isfinite(v).all() for v in final.values())


# ---- collaborator crash and stragglers ------------------------------------------------------------
CUTOFF_POLICY = {"straggler_handling_policy": {
    "template": "openfl.component.aggregator.straggler_handling.CutoffTimePolicy",
    "settings": {"straggler_cutoff_time": 60, "minimum_reporting": 1}}}


@pytest.mark.parametrize("policy", ["wait_for_all", "cutoff_time"])
def test_a_collaborator_killed_mid_round_is_waited_for_or_cut_off_and_rejoins(tiny_split, policy):
    """Default (OpenFL's WaitForAllPolicy): the round waits for the dead site, which
    finishes it after its restart. CutoffTimePolicy (plan snippet above): the round
    ends without it at the cutoff and the restarted site joins a later round: the
    next one if its cold start (process start, model build, first traced training
    step: 40-60 s on this machine) beats the cutoff, else the one after, so that
    variant runs one round more."""
    rounds = ROUNDS + (policy == "cutoff_time")
    ws = make_workspace(tiny_split, tiny_split / "splits", f"ws_{policy}",
                        CUTOFF_POLICY if policy == "cutoff_time" else None, rounds)
    children = Children()
    try:
        start_aggregator(children, ws)
        site1, site2 = start_site(children, ws, "site1"), start_site(children, ws, "site2")
        wait_until(lambda: round_started_for_all(ws, 1), 600, "round 1 to start", [("site1", site1), ("site2", site2)])
        os.killpg(site2.pid, signal.SIGKILL)
        site2.wait(timeout=30)
        if policy == "wait_for_all":
            time.sleep(20)  # long enough for site1 to finish round 1: the round must still be open
            assert not any(e["event"] == "round_end" and e["round"] == 1 for e in events_of(ws))
        else:
            wait_until(lambda: any(e["event"] == "round_end" and e["round"] == 1 for e in events_of(ws)),
                       120, "the cutoff to end round 1", [("site1", site1)])
        restarted = start_site(children, ws, "site2", "site2-restarted.log")
        assert site1.wait(timeout=600) == 0
        assert restarted.wait(timeout=600) == 0, (ws / "site2-restarted.log").read_text()[-3000:]
    finally:
        children.kill_all()

    events = events_of(ws)
    ends = {e["round"]: e for e in events if e["event"] == "round_end"}
    assert sorted(ends) == closed_rounds(rounds)
    uploads = {(e["round"], e["site"]) for e in events if e["event"] == "upload" and e["task"] == "train"}
    if policy == "wait_for_all":
        assert ends[1]["stragglers"] == [] and (1, "site2") in uploads  # round 1 finished by the restarted site
    else:
        assert ends[1]["stragglers"] == ["site2"] and (1, "site2") not in uploads
        rejoined = [r for r in range(2, rounds) if (r, "site2") in uploads and ends[r]["stragglers"] == []]
        assert rejoined, {r: ends[r]["stragglers"] for r in range(2, rounds)}
        # the cutoff timer never raced a round's last upload (the aggregator serializes them)
        assert "Exception in thread" not in (ws / "aggregator.log").read_text()


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

    ws = make_workspace(tiny_split, tiny_split / "splits", "ws_poison")
    broken = {}
    real_train = MultiTaskRunner.train_task

    def train_task(self, col_name, round_num, *args, **kwargs):
        upload, local = real_train(self, col_name, round_num, *args, **kwargs)
        broken[round_num] = poison(upload, round_num)
        return upload, local

    monkeypatch.setattr(MultiTaskRunner, "train_task", train_task)
    children = Children()
    try:
        start_aggregator(children, ws)
        wire = run_sites_recording_site2(children, ws, monkeypatch)
    finally:
        children.kill_all()

    events = events_of(ws)
    rejected = {e["round"]: e for e in events if e["event"] == "rejected"}
    assert sorted(rejected) == list(range(ROUNDS)) and {e["site"] for e in rejected.values()} == {"site2"}
    assert broken[0] in rejected[0]["reason"] and "non-finite" in rejected[0]["reason"]
    assert all(broken[r] in rejected[r]["reason"] and "shape" in rejected[r]["reason"] for r in range(1, ROUNDS))
    assert sorted(e["round"] for e in events if e["event"] == "round_end") == closed_rounds()
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
    time.sleep(1)
    assert _processes_under(tmp_path / "runs") == []
    assert "interrupted" in log_path.read_text()
