"""Label a site's active-learning queue: the labeling page, and the Label Studio / CVAT round trips.

python -m src.cli.label serve --site site1 [--workspace DIR | --queue DIR] [--host 127.0.0.1] [--port 8765]
                              [--token TOKEN] [--min-score 0.3]
python -m src.cli.label export-labelstudio --site site1 --out tasks.json [--config-out config.xml]
                                           [--document-root /]
python -m src.cli.label import-labelstudio --site site1 EXPORT.json
python -m src.cli.label export-coco --site site1 --out coco.json [--copy-images DIR]
python -m src.cli.label import-coco --site site1 EXPORT.json

--workspace: the folder the site's collaborator runs in (default: the current one); its
plan names the queue (task_runner.settings.active_learning.queue, default al_queue/{site})
and the settings the class lists come from; --queue names the queue folder itself, and
--config/--set the settings. The page listens on 127.0.0.1 unless --host says otherwise; any
other address needs a token (--token, else one is generated and printed). Imports save every
valid answer and list the refused ones (exit code 2 when any is refused). Input it cannot use
ends the command with one `error:` line and exit code 2.
"""
from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

import yaml

from src.cli.command import fraction, load_settings, non_negative_int, run_command

DEFAULT_QUEUE = "al_queue/{site}"


def site_oracle(args):
    """The site's HumanOracle over its queue folder, with the class lists of its settings."""
    from src.active_learning.oracles import HumanOracle

    workspace = Path(args.workspace)
    plan_path = workspace / "plan" / "plan.yaml"
    runner = {}
    if plan_path.is_file():
        plan = yaml.safe_load(plan_path.read_text()) or {}
        runner = (plan.get("task_runner") or {}).get("settings") or {}
    config, overrides = args.config, None
    if config is None and runner.get("config"):
        config, overrides = workspace / runner["config"], runner.get("overrides")
    cfg = load_settings(config, args.set, overrides)
    queue = args.queue or workspace / ((runner.get("active_learning") or {}).get("queue") or DEFAULT_QUEUE).format(
        site=args.site)
    if not Path(queue).is_dir():
        raise ValueError(f"{queue}: no label queue of site {args.site} here (the site writes it at its first "
                         "query round with oracle: human; --workspace or --queue name another folder)")
    return HumanOracle(queue, cfg["classes"]["victim"], cfg["classes"]["disaster"],
                       mask_classes=cfg["classes"].get("mask") or ())


def serve(args) -> None:
    from src.labeling.server import LOOPBACK, check_binding, create_app, serve as serve_app

    token = args.token or (None if args.host in LOOPBACK else secrets.token_urlsafe(18))
    check_binding(args.host, token)
    oracle = site_oracle(args)
    app = create_app(oracle, args.site, token=token, min_score=args.min_score)

    def ready(server):
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        print(f"labeling page of site {args.site} ({oracle.queue_dir}): "
              f"http://{host}:{server.server_port}/{'?token=' + token if token else ''}", flush=True)
        if args.host in ("0.0.0.0", "::"):
            print("listening on every address of this machine: open it with this machine's name or address",
                  flush=True)
    serve_app(app, args.host, args.port, ready)


def report(result, what: str) -> None:
    print(f"{what}: saved {len(result.saved)} answer(s), {result.unanswered} task(s) not annotated, "
          f"{len(result.refused)} refused")
    for message in result.refused:
        print(f"  refused: {message}")
    if result.refused:
        raise ValueError(f"{len(result.refused)} answer(s) refused, listed above; fix them and import again")


def interchange(args) -> None:
    from src.labeling import interchange as ix

    oracle = site_oracle(args)
    if args.command == "export-labelstudio":
        tasks = ix.export_label_studio(oracle, Path(args.document_root), args.min_score)
        ix.write_json(args.out, tasks)
        config_out = args.config_out or args.out.with_name("label_studio_config.xml")
        config_out.write_text(ix.label_studio_config(oracle.victim_classes, oracle.disaster_classes))
        print(f"{len(tasks)} task(s) -> {args.out}; labeling interface -> {config_out}")
    elif args.command == "export-coco":
        coco = ix.export_coco(oracle, args.min_score, args.copy_images)
        ix.write_json(args.out, coco)
        print(f"{len(coco['images'])} image(s), {len(coco['annotations'])} model box(es) -> {args.out}"
              + (f"; images copied under {args.copy_images}" if args.copy_images else ""))
    elif args.command == "import-labelstudio":
        report(ix.import_label_studio(oracle, args.file), str(args.file))
    else:
        report(ix.import_coco(oracle, args.file), str(args.file))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m src.cli.label", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--site", required=True, help="the site's name (its collaborator's -n)")
    common.add_argument("--workspace", default=".", help="the folder the site's collaborator runs in")
    common.add_argument("--queue", type=Path, help="the queue folder itself (default: from the workspace's plan)")
    common.add_argument("--config", type=Path, help="settings file (default: the workspace plan's)")
    common.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting")
    common.add_argument("--min-score", type=fraction, default=0.3,
                        help="show the model's boxes scoring at least this (default 0.3)")
    s = sub.add_parser("serve", parents=[common], help="the labeling page")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=non_negative_int, default=8765, help="port (default 8765; 0: any free one)")
    s.add_argument("--token", help="the token every request must carry (generated when --host is not loopback)")
    e = sub.add_parser("export-labelstudio", parents=[common], help="Label Studio import tasks with pre-annotations")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--config-out", type=Path, help="labeling interface XML (default: label_studio_config.xml beside --out)")
    e.add_argument("--document-root", default="/", help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")
    c = sub.add_parser("export-coco", parents=[common], help="COCO json with the model's boxes, for CVAT")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--copy-images", type=Path, help="copy the images here under their keys (to zip for CVAT)")
    for name, what in (("import-labelstudio", "Label Studio's JSON export"), ("import-coco", "CVAT's COCO export")):
        i = sub.add_parser(name, parents=[common], help=f"{what} as answers")
        i.add_argument("file", type=Path, help=what)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    return run_command(lambda: serve(args) if args.command == "serve" else interchange(args))


if __name__ == "__main__":
    sys.exit(main())
