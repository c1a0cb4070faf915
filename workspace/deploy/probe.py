"""Ping the aggregator as a site would, with a given certificate, and print what it answered.

Run on a site's machine from its workspace (the plan gives the aggregator's FQDN, port
and the federation's ids), with OpenFL's own gRPC client over mutual TLS:

    python PATH/TO/probe.py --name site1 --try LABEL CERT KEY [--try ...] [--chain cert/cert_chain.crt]

prints one JSON line per certificate tried: {"label": ..., "code": "OK"} or
{"label": ..., "code": "UNAUTHENTICATED", "details": "..."}.
A standalone script (like fx_batch.py): it imports only OpenFL and gRPC.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--name", required=True, help="the site name the request claims")
    p.add_argument("--try", dest="tries", nargs=3, action="append", required=True,
                   metavar=("LABEL", "CERT", "KEY"), help="a certificate and its key to connect with")
    p.add_argument("--chain", default="cert/cert_chain.crt", help="the CA chain the aggregator is checked against")
    args = p.parse_args(argv)

    from openfl.federated import Plan
    from openfl.transport.grpc.aggregator_client import AggregatorGRPCClient

    plan = Plan.parse(plan_config_path=Path("plan/plan.yaml"))
    net = plan.config["network"]["settings"]
    for label, cert, key in args.tries:
        client = AggregatorGRPCClient(
            agg_addr=net["agg_addr"], agg_port=net["agg_port"], aggregator_uuid=plan.aggregator_uuid,
            federation_uuid=plan.federation_uuid, collaborator_name=args.name, use_tls=True,
            require_client_auth=True, root_certificate=args.chain, certificate=cert,
            private_key=key, resend_data_on_reconnection=False)
        try:
            client.ping()
            answer = {"label": label, "code": "OK"}
        except grpc.RpcError as e:
            answer = {"label": label, "code": e.code().name, "details": e.details()}
        finally:
            client.disconnect()
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.pop(0)  # this script's folder must not shadow anything it imports
    sys.exit(main())
