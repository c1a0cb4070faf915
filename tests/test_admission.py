"""Who the aggregator admits while it runs (src/federated/admission.py): the coordinator's
plan/cols.yaml, re-read, and the certificate it signed last for each site."""
import os

import grpc
import pytest

from src.federated.admission import PLAN_MISMATCH, Admission, certificate_fingerprint


@pytest.fixture
def coordinator(tmp_path):
    """A coordinator's files: the federation's CA, cols.yaml listing site1 and site2, their signed certificates."""
    from openfl.cryptography.ca import generate_root_cert

    (tmp_path / "plan").mkdir()
    (tmp_path / "cert" / "client").mkdir(parents=True)
    ca_key, ca_cert = generate_root_cert()
    ws = {"root": tmp_path, "ca": (ca_key, ca_cert), "admission": Admission(tmp_path / "plan" / "cols.yaml",
                                                                             tmp_path / "cert" / "client")}
    list_sites(ws, ["site1", "site2"])
    ws["pem"] = {site: sign(ws, site) for site in ("site1", "site2")}
    return ws


def sign(ws, name: str) -> bytes:
    """What `fx collaborator certify` does: a certificate for name, written to cert/client/col_NAME.crt."""
    from cryptography.hazmat.primitives import serialization
    from openfl.cryptography.ca import sign_certificate
    from openfl.cryptography.participant import generate_csr

    ca_key, ca_cert = ws["ca"]
    _, csr = generate_csr(name, server=False)
    pem = sign_certificate(csr, ca_key, ca_cert.subject).public_bytes(serialization.Encoding.PEM)
    path = ws["root"] / "cert" / "client" / f"col_{name}.crt"
    path.write_bytes(pem)
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)  # a new write, even within one clock tick
    return pem


def list_sites(ws, sites):
    path = ws["root"] / "plan" / "cols.yaml"
    path.write_text("collaborators:\n" + "".join(f"- {s}\n" for s in sites) if sites else "collaborators: []\n")
    os.utime(path, ns=((path.stat().st_mtime_ns + 10**9),) * 2)


def verdict(ws, sender, pem, members=("site1", "site2"), common_name=None, plan_matches=True, round_number=0):
    return ws["admission"].verdict(common_name or sender, sender, pem, list(members), plan_matches, round_number)


def test_a_listed_site_with_the_certificate_signed_for_it_is_admitted_and_everyone_else_is_told_why(coordinator):
    ws = coordinator
    assert verdict(ws, "site1", ws["pem"]["site1"]) is None
    # a certificate claiming another site's name: OpenFL's own check, which follows, refuses it
    assert verdict(ws, "site1", ws["pem"]["site2"], common_name="site2") is None
    unlisted = verdict(ws, "site9", sign(ws, "site9"))
    assert unlisted.code == grpc.StatusCode.UNAUTHENTICATED
    assert unlisted.reason == f"'site9' is not listed in the coordinator's {ws['root']}/plan/cols.yaml"


def test_a_site_listed_during_a_round_waits_for_the_next_and_a_removed_one_finishes_its_round(coordinator):
    ws = coordinator
    list_sites(ws, ["site1", "site3"])
    pem3 = sign(ws, "site3")
    waiting = verdict(ws, "site3", pem3, round_number=4)
    assert waiting.code == grpc.StatusCode.UNAVAILABLE  # a client retries this one
    assert waiting.reason == "'site3' is admitted from round 5; round 4 runs without it"
    assert verdict(ws, "site2", ws["pem"]["site2"]) is None  # still one of round 4's sites
    assert ws["admission"].listed() == ["site1", "site3"]
    # the next round's sites are the listed ones
    assert verdict(ws, "site3", pem3, members=("site1", "site3")) is None
    revoked = verdict(ws, "site2", ws["pem"]["site2"], members=("site1", "site3"))
    assert revoked.code == grpc.StatusCode.UNAUTHENTICATED and "not listed" in revoked.reason


def test_a_replaced_certificate_is_refused_as_soon_as_the_new_one_is_signed(coordinator):
    ws = coordinator
    old = ws["pem"]["site1"]
    new = sign(ws, "site1")
    assert verdict(ws, "site1", new) is None
    refused = verdict(ws, "site1", old)
    assert refused.code == grpc.StatusCode.UNAUTHENTICATED
    assert f"sha256 {certificate_fingerprint(old)[:16]}) is not the one the coordinator signed last" in refused.reason
    (ws["root"] / "cert" / "client" / "col_site1.crt").unlink()
    assert "holds no certificate signed for 'site1'" in verdict(ws, "site1", new).reason


def test_a_site_running_another_plan_is_told_so_whatever_its_membership(coordinator):
    ws = coordinator
    list_sites(ws, ["site1", "site2", "site3"])
    for site, members in [("site1", ("site1", "site2")), ("site3", ("site1", "site2"))]:
        refused = verdict(ws, site, sign(ws, site), members=members, plan_matches=False)
        assert refused.code == grpc.StatusCode.FAILED_PRECONDITION and refused.reason.startswith(PLAN_MISMATCH)


def test_a_cols_yaml_that_does_not_parse_keeps_the_last_good_list(coordinator, caplog):
    ws = coordinator
    assert ws["admission"].listed() == ["site1", "site2"]
    path = ws["root"] / "plan" / "cols.yaml"
    path.write_text("collaborators: [site1, site2\n")  # an editor half-way
    os.utime(path, ns=((path.stat().st_mtime_ns + 10**9),) * 2)
    assert ws["admission"].listed() == ["site1", "site2"]
    assert f"{path}: cannot read it" in caplog.text
    path.write_text("collaborators: site1\n")
    os.utime(path, ns=((path.stat().st_mtime_ns + 2 * 10**9),) * 2)
    assert ws["admission"].listed() == ["site1", "site2"]
    assert "`collaborators` must be a list of site names" in caplog.text
