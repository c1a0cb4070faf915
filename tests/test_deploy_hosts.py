"""The runbook (docs/deployment.md) played as separate machines: `make test-deploy`.

One folder and one network namespace per host (coordinator, site1, site2, site3), the
aggregator reached as agg.fed.test, every command read from the runbook
(workspace/deploy/), only the travel table's files moved. One federation timeline:

- site1 and site2 start with the aggregator; round 0 is held open by pausing site2
  (a slow site) while the coordinator changes the federation:
  - site3 imported the coordinator's first export (3 rounds; the plan then became
    2 rounds and was exported again): it is signed, starts, is refused because its
    plan differs, imports the current export and starts again;
  - site2 is revoked;
  - site1's certificate is rotated: its running collaborator (old certificate) is
    refused; the old and a foreign-CA certificate are refused, the new one admitted;
- round 1 runs site1 and site3 (site2 refused); the aggregator is killed mid-round
  and started again, resumes, and the federation ends with the final validation
  round; the coordinator exports the model.

Then: no private key in another host's folder, no site image at the coordinator,
every tagged block of the runbook ran. Timings and every refusal are printed (-s).
"""
import hashlib
import json
import os
import shlex
import shutil
import signal
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.tiny_federation import REPO, TINY
from workspace.deploy.hosts import FX_BATCH, Rehearsal, signal_group
from workspace.deploy.network import Network, remove_leftovers
from workspace.deploy.runbook import Runbook, RunbookError
from workspace.deploy.steps import (coordinator_setup, events, files_under, install, new_request, settle_plan,
                                    sign, site_prepare, site_request)
from workspace.simulate.processes import free_port

pytestmark = pytest.mark.deploy

C, SITES, JOINER = "coordinator", ["site1", "site2"], "site3"
HOSTS = {C: "coordinator", "site1": "site", "site2": "site", JOINER: "site"}
FQDN = "agg.fed.test"
ROUNDS = 2
# C2, the operator's plan values: the tests' tiny model, 2 training rounds, one pass over a
# site's images an epoch. The first export (the one site3 imports) still said 3 rounds.
PLAN = {"task_runner.settings.backbone_init": "scratch", "data_loader.settings.repeat_to_batches": None,
        "aggregator.settings.rounds_to_train": ROUNDS}
OLD_PLAN = {**PLAN, "aggregator.settings.rounds_to_train": ROUNDS + 1}
OVERRIDES = {"seed": 0, **TINY}
PROBE = Path(__file__).resolve().parent.parent / "workspace" / "deploy" / "probe.py"


def note(start: float, message: str):
    print(f"[{time.monotonic() - start:6.1f} s] {message}", flush=True)


def images(seed: int):
    def make(folder: Path):
        from src.data.synthetic import generate_dataset

        generate_dataset(folder, num_images=40, seed=seed, min_size=96, max_size=128, workers=1)
    return make


def wait_until(condition, timeout_s: float, what: str, procs=()):
    deadline = time.monotonic() + timeout_s
    while not condition():
        for name, (proc, log) in procs:
            assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(0.5)


def exit_of(service, timeout_s: float = 120) -> tuple[int, str]:
    proc, log = service
    code = proc.wait(timeout=timeout_s)
    return code, log.read_text()


def quote(log: str, marker: str) -> str:
    """The refusal an operator reads: OpenFL's `EXCEPTION :` line holding marker."""
    lines = [line.strip() for line in log.splitlines() if marker in line]
    return next((line for line in lines if line.startswith("EXCEPTION")), lines[0] if lines else "(none)")


@pytest.fixture
def rehearsal(tmp_path):
    """The hosts on their network; everything they made is removed at the end, also on failure."""
    print("\nleftovers of an earlier run removed:", remove_leftovers() or "none")
    network = Network(list(HOSTS), C, FQDN, force_loopback=os.environ.get("DEPLOY_NETWORK") == "loopback")
    r = None
    try:
        network.create()
        print("network:", network.describe(), flush=True)
        model_settings = " ".join("--set " + shlex.quote(f"{k}={json.dumps(v)}") for k, v in TINY.items())
        r = Rehearsal(tmp_path, Runbook.parse(REPO / "docs" / "deployment.md"), network, HOSTS,
                      {"AGG_FQDN": FQDN, "DATA": "~/images", "MODEL_SETTINGS": model_settings})
        yield r
    finally:
        if r is not None:
            r.stop_services()
        network.destroy()
        assert not network.leftovers(), network.leftovers()


def contents(folder: Path) -> list[tuple[str, bytes]]:
    """Every file under folder, and every member of its zip archives, with its bytes."""
    found = []
    for path in files_under(folder):
        found.append((str(path), path.read_bytes()))
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                found += [(f"{path}!{m}", archive.read(m)) for m in archive.namelist()]
    return found


def key_needles(pem: bytes) -> list[bytes]:
    """What any copy of a PEM RSA key holds and nothing public does: a full line of its
    base64 body and a slice of its DER bytes, both from its end (the primes and exponents;
    its start is the modulus, which the certificate holds too)."""
    import base64

    body = [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
    return [body[-2], base64.b64decode(b"".join(body))[-64:]]


def write_foreign_certificate(folder: Path, name: str) -> tuple[Path, Path]:
    """A certificate for `name` from a CA of its own (what `fx workspace certify` makes elsewhere)."""
    from openfl.cryptography.ca import generate_root_cert, sign_certificate
    from openfl.cryptography.io import write_crt, write_key
    from openfl.cryptography.participant import generate_csr

    ca_key, ca_cert = generate_root_cert()
    key, csr = generate_csr(name, server=False)
    folder.mkdir(parents=True, exist_ok=True)
    write_key(key, folder / f"{name}.key")
    write_crt(sign_certificate(csr, ca_key, ca_cert.subject), folder / f"{name}.crt")
    return folder / f"{name}.crt", folder / f"{name}.key"


def test_the_runbook_runs_as_separate_hosts(rehearsal):
    r, start = rehearsal, time.monotonic()
    home = {name: m.home for name, m in r.machines.items()}
    port = {} if r.network.mode == "namespaces" else {"network.settings.agg_port": free_port()}

    # ---- setup: C1-C3 twice (the plan changed after the first export), S1-S5 ----------------
    coordinator_setup(r, C, {**OLD_PLAN, **port}, OVERRIDES)
    r.run(C, "coordinator/export")
    site_prepare(r, JOINER, C, images(3))  # keeps the first export
    settle_plan(r, C, PLAN)
    r.run(C, "coordinator/export")
    note(start, "coordinator: plan, CA, aggregator certificate, exported twice")

    def prepare_and_request(site: str) -> str:
        if site != JOINER:
            site_prepare(r, site, C, images(SITES.index(site) + 1))
        return site_request(r, site)

    with ThreadPoolExecutor(3) as pool:
        hashes = dict(zip([*SITES, JOINER], pool.map(prepare_and_request, [*SITES, JOINER])))
    for site in SITES:
        sign(r, C, site, hashes[site])
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda s: install(r, s), SITES))
    note(start, f"sites imported, data, requests signed (hashes compared) and installed: {SITES}; "
                f"{JOINER} requested with the old export")
    with pytest.raises(RunbookError, match="may not go from site to coordinator"):
        r.move("cert/client/col_site1.key", "site1", C)

    # ---- the federation ------------------------------------------------------------------------
    agg = r.start(C, "coordinator/start")
    sites = {s: r.start(s, "site/start") for s in SITES}
    # round 0 (it cannot end before site1 and site2 are up and trained): site3 joins, with
    # the old export first; site2 is revoked
    sign(r, C, JOINER, hashes[JOINER])
    install(r, JOINER)
    stale = r.start(JOINER, "site/start")
    r.run(C, "coordinator/revoke", SITE="site2")
    note(start, "aggregator, site1, site2 started; site3 signed and started; site2 revoked")
    running = [("aggregator", agg), *sites.items()]
    sent = lambda rnd, site: any(e["event"] == "tasks_sent" and e["round"] == rnd and e["site"] == site
                                 for e in events(r, C))
    uploaded = lambda rnd, site: any(e["event"] == "upload" and e["task"] == "train" and e["round"] == rnd
                                     and e["site"] == site for e in events(r, C))
    wait_until(lambda: sent(0, "site1") and sent(0, "site2"), 600, "round 0 tasks at site1 and site2", running)
    signal_group(sites["site2"][0], signal.SIGSTOP)  # a slow site: round 0 stays open
    assert not any(e["event"] == "members" and e.get("added") for e in events(r, C))  # still round 0
    wait_until(lambda: uploaded(0, "site1"), 300, "site1's round-0 upload", [("site1", sites["site1"])])
    note(start, "round 0: site1 trained with its first certificate; site2 paused")

    # rotate site1's certificate: the running collaborator (old certificate) is refused
    client = home["site1"] / "federation" / "cert" / "client"
    old = home["site1"] / "old-cert"  # the site keeps its old pair aside: it never leaves site1
    shutil.copytree(client, old)
    sign(r, C, "site1", new_request(r, "site1"))
    old_run = exit_of(sites["site1"])
    install(r, "site1")
    foreign = write_foreign_certificate(home["site1"] / "foreign-ca", "site1")
    probes = {p["label"]: p for p in map(json.loads, r.machines["site1"].run(
        f"cd ~/federation && {home['site1']}/code/.venv/bin/python {PROBE} --name site1 "
        f"--try new {client}/col_site1.crt {client}/col_site1.key --try old {old}/col_site1.crt {old}/col_site1.key "
        f"--try foreign {foreign[0]} {foreign[1]}", "probe").splitlines())}
    sites["site1"] = r.start("site1", "site/start")
    note(start, "site1's certificate rotated, its old collaborator refused, restarted with the new one")
    stale_run = exit_of(stale)
    r.move("federation.zip", C, JOINER)
    r.run(JOINER, "site/reimport")
    joined = r.start(JOINER, "site/start")
    note(start, "site3 refused (old export), imported the current one and started again")
    assert not any(e["event"] == "members" and e.get("added") for e in events(r, C))  # still round 0
    signal_group(sites["site2"][0], signal.SIGCONT)

    # round 1: site1 (new certificate) and site3; the aggregator dies mid-round and restarts
    revoked_run = exit_of(sites["site2"], 300)
    running = [("aggregator", agg), ("site1", sites["site1"]), (JOINER, joined)]
    wait_until(lambda: sent(1, "site1") and sent(1, JOINER), 600, "round 1 tasks at site1 and site3", running)
    signal_group(agg[0], signal.SIGKILL)
    agg[0].wait(timeout=30)
    assert not any(e["event"] == "round_end" and e["round"] == 1 for e in events(r, C)), "round 1 ended early"
    note(start, "round 1 running; aggregator killed, started again")
    agg = r.start(C, "coordinator/start")
    for name, service in [("site1", sites["site1"]), (JOINER, joined), ("aggregator", agg)]:
        code, log = exit_of(service, 600)
        assert code == 0, f"{name} exited with {code}:\n{log[-3000:]}"
    watched = r.run(C, "coordinator/watch")
    collected = r.run(C, "coordinator/collect")
    note(start, "federation finished, model exported")

    # ---- what happened --------------------------------------------------------------------------
    ev = events(r, C)
    ends = [e["round"] for e in ev if e["event"] == "round_end"]
    assert ends == list(range(ROUNDS + 1)), ends  # 2 training rounds + the final validation round
    assert any(e["event"] == "final_model" for e in ev) and '"final_model"' in watched
    members = [e for e in ev if e["event"] == "members"]
    assert members[0]["sites"] == SITES
    change = next(e for e in members if e.get("added"))
    assert (change["round"], change["added"], change["removed"]) == (1, [JOINER], ["site2"]), change
    trained = {(e["round"], e["site"]) for e in ev if e["event"] == "upload" and e["task"] == "train"}
    assert trained == {(0, "site1"), (0, "site2"), (1, "site1"), (1, JOINER)}, trained
    assert not any(e["event"] == "tasks_sent" and e["site"] == "site2" and e["round"] >= 1 for e in ev)
    # resume: the restarted aggregator continued round 1
    starts = [i for i, e in enumerate(ev) if e["event"] == "model"]
    assert len(starts) == 2 and next(e for e in ev[starts[1]:] if e["event"] == "round_start")["round"] == 1
    assert "Recover" in agg[1].read_text()
    for path in ("export/model.keras", "export/model_fp16.tflite", "save/best.pbuf", "save/final.pbuf"):
        assert (home[C] / "federation" / path).is_file(), path
    assert "model_fp16.tflite" in collected

    # refusals, each with its reason
    refusals = {
        "site3 with the old export": (stale_run, "plan/plan.yaml differs from the aggregator's"),
        "site2 after its revocation": (revoked_run, "is not listed in the coordinator's plan/cols.yaml"),
        "site1's collaborator with the old certificate": (old_run, "is not the one the coordinator signed last"),
    }
    for what, ((code, log), marker) in refusals.items():
        assert code != 0 and marker in log, (what, code, log[-3000:])
        print(f"refused, {what}: {quote(log, marker)}")
    assert probes["new"]["code"] == "OK", probes
    assert probes["old"]["code"] == "UNAUTHENTICATED" and "signed last" in probes["old"]["details"], probes
    assert probes["foreign"]["code"] == "UNAVAILABLE", probes  # the TLS handshake fails: nothing is read
    for label in ("old", "foreign"):
        print(f"probe from site1, {label} certificate: {probes[label]['code']}: {probes[label].get('details')}")
    refused_events = {(e["site"], e["reason"]) for e in ev if e["event"] == "refused"}
    print("refused (aggregator's event log):", *sorted(refused_events), sep="\n  ")

    # ---- what never left a machine -------------------------------------------------------------
    held = {h: contents(home[h]) for h in home}
    holders = lambda needle, hosts: [name for h in hosts for name, data in held[h] if needle in data]
    for site in [*SITES, JOINER]:
        keys = list((home[site] / "federation" / "cert" / "client").glob("*.key"))
        keys += list(old.glob("*.key")) if site == "site1" else []
        for key in keys:
            for needle in key_needles(key.read_bytes()):
                assert not holders(needle, [h for h in home if h != site]), (site, key)
    for key in (home[C] / "federation" / "cert").rglob("*.key"):  # the CA's and the aggregator's
        for needle in key_needles(key.read_bytes()):
            assert not holders(needle, [h for h in home if h != C]), key
    assert holders(key_needles(next(old.glob("*.key")).read_bytes())[0], ["site1"])  # the search finds keys
    site_data = {hashlib.sha256(p.read_bytes()).hexdigest() for s in [*SITES, JOINER]
                 for p in files_under(home[s] / "images") if p.suffix in (".jpg", ".png") or p.stat().st_size}
    at_coordinator = [name for name, data in held[C] if hashlib.sha256(data).hexdigest() in site_data]
    assert not at_coordinator, at_coordinator
    assert {m[0] for m in r.moved} == {"federation.zip", *(f"col_{s}_to_agg_cert_request.zip" for s in HOSTS if s != C),
                                       *(f"agg_to_col_{s}_signed_cert.zip" for s in HOSTS if s != C)}
    assert r.ran == set(r.runbook.blocks), sorted(set(r.runbook.blocks) - r.ran)
    print("moved between hosts:", *(f"{f}: {a} -> {b}" for f, a, b in r.moved), sep="\n  ")
    print(f"network: {r.network.describe()}; fx batches through {FX_BATCH.name}")
    note(start, "all checks passed")
