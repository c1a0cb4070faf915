"""Which sites the aggregator admits while it runs, read from the coordinator's own files.

OpenFL 1.9 reads plan/cols.yaml once, when the aggregator starts, and admits any
certificate of the federation's CA whose common name is listed there: adding or
removing a site needs an aggregator restart, and a replaced (rotated) certificate
stays valid, since OpenFL checks no revocation list. Here:

- Membership follows plan/cols.yaml. The aggregator re-reads it at every round
  start and the round's sites are the ones listed then (PromptAggregator). A site
  listed since the round began may connect and is told to wait (UNAVAILABLE,
  "admitted from round N"); a site no longer listed finishes the round it is in
  and is refused (UNAUTHENTICATED) from the next one.
- A site must present the certificate the coordinator signed last for its name:
  cert/client/col_NAME.crt in the coordinator's workspace, the file
  `fx collaborator certify` writes. Signing a new request for a name (rotation)
  refuses the previous certificate at once; removing the file refuses the name.
- An admitted certificate whose request carries other federation ids (its
  plan/plan.yaml differs) is told so, whatever its membership.

`install_server_check()` puts these checks in front of OpenFL's own in the gRPC
server: `AggregatorGRPCServer.validate_collaborator` hands the aggregator only the
common name, the certificate itself is in the call's TLS context.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from random import random

import grpc
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

log = logging.getLogger(__name__)

# What the site's collaborator recognises as "your plan differs" (src/federated/collaborator.py).
PLAN_MISMATCH = "Federation UUID in request header does not match"


@dataclass(frozen=True)
class Verdict:
    """A refusal: the gRPC status the call ends with and the reason the site is told."""
    code: grpc.StatusCode
    reason: str


def certificate_fingerprint(pem: bytes) -> str:
    """SHA-256 of a PEM certificate's DER bytes (the same for any PEM line layout)."""
    cert = x509.load_pem_x509_certificate(pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def read_cols(path: Path) -> list[str]:
    """The site names plan/cols.yaml lists (`collaborators: [...]`); ValueError naming the file."""
    doc = yaml.safe_load(path.read_text()) or {}
    names = doc.get("collaborators") if isinstance(doc, dict) else None
    if names is None:
        return []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: `collaborators` must be a list of site names, got {names!r}")
    return list(names)


class Admission:
    """The coordinator's cols.yaml and signed certificates, re-read whenever they change."""

    def __init__(self, cols_path: str | Path = "plan/cols.yaml", cert_dir: str | Path = "cert/client"):
        self.cols_path, self.cert_dir = Path(cols_path), Path(cert_dir)
        self._lock = threading.Lock()
        self._cache: dict[Path, tuple[tuple, object]] = {}

    def listed(self) -> list[str]:
        """The sites cols.yaml lists now. A file that does not parse keeps the last good list
        (an editor may be half-way through writing it); the error names the file."""
        return self._read(self.cols_path, read_cols, missing=[])

    def signed_path(self, name: str) -> Path:
        return self.cert_dir / f"col_{name}.crt"

    def signed_fingerprint(self, name: str) -> str | None:
        return self._read(self.signed_path(name), lambda p: certificate_fingerprint(p.read_bytes()), missing=None)

    def _read(self, path: Path, parse, missing):
        try:
            st = path.stat()
        except FileNotFoundError:
            return missing
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            cached = self._cache.get(path)
            if cached and cached[0] == stamp:
                return cached[1]
            try:
                value = parse(path)
            except (ValueError, OSError, yaml.YAMLError) as err:
                log.error("%s: cannot read it (%s); keeping what it said before", path, err)
                return cached[1] if cached else missing
            self._cache[path] = (stamp, value)
            return value

    def verdict(self, common_name: str, sender: str, pem: bytes, members: list[str],
                plan_matches: bool, round_number: int) -> Verdict | None:
        """None if the call may proceed to OpenFL's own checks, else the refusal.

        members: the sites of the round in progress (a site removed from cols.yaml
        stays one until the round ends)."""
        if common_name != sender:
            return None  # OpenFL's own check refuses it ("Invalid collaborator. CN: |...|")
        if sender not in members and sender not in self.listed():
            return Verdict(grpc.StatusCode.UNAUTHENTICATED,
                           f"{sender!r} is not listed in the coordinator's {self.cols_path}")
        signed = self.signed_fingerprint(sender)
        if signed is None:
            return Verdict(grpc.StatusCode.UNAUTHENTICATED,
                           f"the coordinator holds no certificate signed for {sender!r} ({self.signed_path(sender)})")
        if not pem:
            return Verdict(grpc.StatusCode.UNAUTHENTICATED, f"{sender!r} presented no client certificate")
        presented = certificate_fingerprint(pem)
        if presented != signed:
            return Verdict(grpc.StatusCode.UNAUTHENTICATED,
                           f"the certificate {sender!r} presented (sha256 {presented[:16]}) is not the one the "
                           f"coordinator signed last for it ({self.signed_path(sender)}, sha256 {signed[:16]}): "
                           f"a replaced certificate")
        if not plan_matches:
            return Verdict(grpc.StatusCode.FAILED_PRECONDITION,
                           f"{PLAN_MISMATCH} the aggregator's: {sender!r} runs another plan/plan.yaml "
                           f"than the coordinator's")
        if sender not in members:
            return Verdict(grpc.StatusCode.UNAVAILABLE,
                           f"{sender!r} is admitted from round {round_number + 1}; round {round_number} "
                           f"runs without it")
        return None


def install_server_check() -> None:
    """Run the aggregator's `admission_verdict(common_name, header, pem)` before OpenFL's
    own check in every gRPC call of this process's aggregator server (once per process)."""
    from openfl.transport.grpc.aggregator_server import AggregatorGRPCServer

    stock = AggregatorGRPCServer.validate_collaborator
    if getattr(stock, "admission_check", False):
        return

    def validate_collaborator(self, request, context):
        check = getattr(self.aggregator, "admission_verdict", None)
        if self.use_tls and self.require_client_auth and check is not None:
            auth = context.auth_context()
            common_name = auth["x509_common_name"][0].decode("utf-8")
            verdict = check(common_name, request.header, auth.get("x509_pem_cert", [b""])[0])
            if verdict is not None:
                if verdict.code == grpc.StatusCode.UNAUTHENTICATED:
                    time.sleep(5 * random())  # nosec - OpenFL's delay on a failed authentication
                context.abort(verdict.code, verdict.reason)
        stock(self, request, context)

    validate_collaborator.admission_check = True
    AggregatorGRPCServer.validate_collaborator = validate_collaborator
