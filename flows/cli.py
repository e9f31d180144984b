"""The ``maskloop`` command line. Builds the one Settings object and hands it to flows and storage."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from flows.cli_catalog import cmd_jobs, cmd_runs, cmd_versions
from flows.cli_flows import cmd_active_learning, cmd_harvest, cmd_prelabel
from flows.cli_settings import settings_of, stack_settings_of
from flows.options import add_options
from model.errors import MaskloopError
from model.strategies import STRATEGIES
from storage.params import HarvestParams, PrelabelParams


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from storage.catalog import Catalog
    from storage.catalog.db import current_revision

    catalog = Catalog(settings_of(args).resolved_database_url)
    print(f"catalog {catalog!r} at revision {current_revision(catalog.engine)}")
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    from storage.stack.manager import Stack

    settings = settings_of(args)
    stack = Stack(settings.data_dir, prefect_port=args.prefect_port)
    if args.action == "up":
        statuses = stack.up(label_studio=not args.no_label_studio, prefect=not args.no_prefect, base=settings)
    elif args.action == "down":
        stopped = stack.down()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing (no service started by maskloop is running)"))
        return 0
    else:
        statuses = stack.status(settings)
    for status in statuses:
        state = "running" if status.running else "stopped"
        print(f"{status.name:<14} {state:<8} {status.url} {status.detail}".rstrip())
    print(
        f"S3 credentials {settings.data_dir / 'credentials.json'} (owner-only; access key {stack.credentials.s3_access_key_id})"
    )
    ls_creds = stack.label_studio().data_dir / "credentials.json"
    if ls_creds.exists():
        print(f"Label Studio   login and token in {ls_creds} (owner-only)")
    if any(s.name == "prefect-server" and s.running for s in statuses):
        print(f"Prefect        maskloop commands use {stack.prefect.api_url} unless PREFECT_API_URL is set")
    return 0


def cmd_discover(args: argparse.Namespace) -> int:
    from flows.discover import discover_flow

    report = discover_flow(args.source, settings=stack_settings_of(args))
    print(
        f"listed {report.listed} ({report.sniffed} by content), new {len(report.new_asset_ids)} "
        f"({report.new_revisions} new revisions), unchanged {report.unchanged}, not media {report.not_media}"
    )
    if report.not_media:
        print(f"what was skipped: maskloop skipped {args.source}")
    return 0


def cmd_skipped(args: argparse.Namespace) -> int:
    from storage.catalog import Catalog
    from storage.catalog.assets import skipped_objects
    from storage.s3 import parse_s3_uri

    bucket, prefix = parse_s3_uri(args.source)
    with Catalog(settings_of(args).resolved_database_url) as catalog:
        rows = skipped_objects(catalog, bucket, prefix)
    for row in rows:
        print(f"{row.uri}  {row.size} bytes  {row.reason}")
    print(f"{len(rows)} objects under {args.source} skipped as not images or videos")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.demo import run_demo

    return run_demo(settings_of(args), keep_running=not args.stop_after)


def cmd_finetune(args: argparse.Namespace, rest: Sequence[str]) -> int:
    from model.finetune.cli import main as finetune_main

    return int(finetune_main(list(rest)))


def cmd_deploy(args: argparse.Namespace) -> int:
    from flows.deploy import deploy

    extra = {"prefect_file": Path(args.prefect_file)} if args.prefect_file else {}
    report = deploy(gpu_slots=args.gpu_slots, deployments=not args.pools_only, **extra)
    print(f"global concurrency limit gpu: {report.gpu_limit} slot(s)")
    print(
        f"work pools created: {', '.join(report.pools_created) or '-'}; updated: {', '.join(report.pools_updated) or '-'}"
    )
    if report.deployed:
        print("deployments applied: " + ", ".join(report.deployed))
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    from flows.events import listen
    from storage.s3_events import make_sqs_client

    sqs = make_sqs_client(settings_of(args), args.sqs_endpoint_url)
    print(f"listening on {args.queue_url} (Ctrl-C stops)", file=sys.stderr)
    report = listen(sqs, args.queue_url, wait_s=args.wait, max_polls=args.max_polls)
    print(f"{report.messages} messages, {report.events} s3.object.created events emitted, {report.rejected} rejected")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskloop", description="S3 -> SAM 2 -> Label Studio -> versioned datasets")
    parser.add_argument("--data-dir", help="state directory (default: $MASKLOOP_DATA_DIR or ~/.maskloop)")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="-v: maskloop's and Prefect's INFO lines, -vv: DEBUG"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="catalog database")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="migrate the catalog to the latest schema").set_defaults(func=cmd_db_upgrade)

    stack = sub.add_parser("stack", help="local S3 server, Label Studio and Prefect server + worker on 127.0.0.1")
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.add_argument("--no-label-studio", action="store_true", help="do not start Label Studio")
    stack.add_argument(
        "--no-prefect", action="store_true", help="do not start the Prefect server, its worker and the S3 poller"
    )
    stack.add_argument(
        "--prefect-port", type=int, help="Prefect server port (default: its last port, else 4200, else a free one)"
    )
    stack.set_defaults(func=cmd_stack)

    disc = sub.add_parser("discover", help="record new objects under s3://bucket/prefix in the catalog")
    disc.add_argument("source")
    disc.set_defaults(func=cmd_discover)

    skip = sub.add_parser("skipped", help="list the objects under s3://bucket/prefix skipped as not media")
    skip.add_argument("source")
    skip.set_defaults(func=cmd_skipped)

    pre = sub.add_parser("prelabel", help="pre-label new media under s3://bucket/prefix into Label Studio")
    add_options(pre, PrelabelParams, choices={"strategy": list(STRATEGIES)})
    pre.set_defaults(func=cmd_prelabel)

    runs = sub.add_parser("runs", help="list runs, or show one with its failures")
    runs.add_argument("action", choices=["list", "show"])
    runs.add_argument("run_id", type=int, nargs="?")
    runs.add_argument("--last", type=int, default=20)
    runs.add_argument("--report", metavar="OUT.html", help="show: also write the run's HTML report (with pictures)")
    runs.set_defaults(func=cmd_runs)

    job = sub.add_parser("jobs", help="pre-label jobs (project, model version, prompts): covered / pending / failed")
    job.add_argument("action", choices=["list", "show"])
    job.add_argument("job_id", type=int, nargs="?")
    job.set_defaults(func=cmd_jobs)

    har = sub.add_parser("harvest", help="pull corrections from a Label Studio project into the catalog")
    add_options(har, HarvestParams)
    har.set_defaults(func=cmd_harvest)

    from storage.params import ActiveLearningParams

    al = sub.add_parser(
        "active-learning", help="one active-learning round: harvest, fine-tune, compare, re-pre-label, prioritise"
    )
    add_options(al, ActiveLearningParams, choices=ActiveLearningParams.choices())
    al.set_defaults(func=cmd_active_learning)

    ver = sub.add_parser("versions", help="immutable dataset versions: create, list, show, diff, export, gc")
    ver.add_argument("action", choices=["create", "list", "show", "diff", "export", "gc"])
    ver.add_argument("ids", type=int, nargs="*", help="version id (show, export) or two (diff)")
    ver.add_argument("--project", help="create: catalog project name")
    ver.add_argument("--dest", help="create, gc: s3://bucket/prefix for the COCO export and manifest")
    ver.add_argument(
        "--min-age-s",
        type=float,
        default=3600.0,
        help="gc: delete only objects at least this old (a version being created keeps its objects)",
    )
    ver.add_argument("--dataset", help="dataset name (create: default the project name; list: filter)")
    ver.add_argument("--tag")
    ver.add_argument("--polygons", action="store_true")
    ver.add_argument("--preview", help="show: write a contact sheet PNG here")
    from storage.formats.registry import EXPORTERS  # --format offers the exporter table's names

    ver.add_argument("--format", default="coco", choices=list(EXPORTERS), help="export: file format")
    ver.add_argument("--out", help="export: output directory")
    ver.add_argument("--images", action="store_true", help="export: also download the images")
    ver.set_defaults(func=cmd_versions)

    dep = sub.add_parser("deploy", help="create the gpu concurrency limit and work pools, deploy the flows")
    dep.add_argument("--gpu-slots", type=int, default=1, help="slots of the global concurrency limit gpu (= GPUs)")
    dep.add_argument("--pools-only", action="store_true", help="only the limit and the work pools")
    dep.add_argument(
        "--prefect-file",
        help="deployments to apply (default deployments/prefect.yaml; entrypoints relative to the repository root)",
    )
    dep.set_defaults(func=cmd_deploy)

    events = sub.add_parser("events", help="S3 notifications (SQS) -> Prefect events")
    events_sub = events.add_subparsers(dest="events_command", required=True)
    listen = events_sub.add_parser("listen", help="emit s3.object.created for each S3 notification in an SQS queue")
    listen.add_argument("--queue-url", required=True)
    listen.add_argument("--sqs-endpoint-url", help="non-AWS SQS endpoint (e.g. a local test server)")
    listen.add_argument("--wait", type=int, default=20, help="long-poll seconds per receive (0..20)")
    listen.add_argument("--max-polls", type=int, help="stop after this many receives (default: run until Ctrl-C)")
    listen.set_defaults(func=cmd_events)

    demo = sub.add_parser("demo", help="run the whole job on the embedded defaults")
    demo.add_argument("--stop-after", action="store_true", help="stop the stack when done")
    demo.set_defaults(func=cmd_demo)

    sub.add_parser("finetune", help="fine-tune SAM 2 (see `maskloop finetune --help`)", add_help=False).set_defaults(
        func=None
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Without PREFECT_API_URL, flows run on Prefect's temporary local server; on a busy 2-core machine it can need
    # more than Prefect's default 20 s to start.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # That server would otherwise try to send Prefect telemetry: maskloop reaches nothing beyond loopback.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")  # nor Prefect's client telemetry (and its notice on the terminal)
    parser = build_parser()
    if "finetune" in argv:
        head = argv[: argv.index("finetune")]
        args = parser.parse_args([*head, "finetune"])
        _configure_logging(args)
        return cmd_finetune(args, argv[argv.index("finetune") + 1 :])
    args = parser.parse_args(argv)
    _configure_logging(args)
    try:
        with _stack_prefect_api(args), _attended(args):
            return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except MaskloopError as error:  # raised on purpose: its message says what went wrong and what to do
        print(f"maskloop {args.command}: {error}", file=sys.stderr)
        return error.exit_code
    except (TimeoutError, FileNotFoundError, PermissionError) as error:
        print(f"maskloop {args.command}: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # one line here; the traceback in the log file (and on the terminal with -vv)
        if args.verbose >= 2:
            raise
        from flows.terminal import log_failure

        where = log_failure(f"maskloop {args.command} failed")
        print(f"maskloop {args.command}: {type(error).__name__}: {error}", file=sys.stderr)
        print(f"  the traceback is in {where} (or run with -vv)", file=sys.stderr)
        return 1


# Commands that talk to Prefect (flows, deployments, events); `demo` points itself at the stack it starts.
_PREFECT_COMMANDS = frozenset({"discover", "prelabel", "harvest", "active-learning", "deploy", "events"})


@contextlib.contextmanager
def _stack_prefect_api(args: argparse.Namespace) -> Iterator[None]:
    """Point a Prefect command at the local stack's Prefect server when it answers and no PREFECT_API_URL is set (in
    the environment or the Prefect profile): no temporary server per command, runs visible in the stack's UI."""
    if args.command not in _PREFECT_COMMANDS or os.environ.get("PREFECT_API_URL"):
        yield
        return
    from storage.stack.prefect_server import stack_api_url

    url = stack_api_url(settings_of(args).data_dir)
    if url is None:
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():  # set in the Prefect profile (or by a caller's settings context)
        yield
        return
    os.environ["PREFECT_API_URL"] = url  # for the processes this command starts
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)


# Commands that run flows in this process, watched by the person who started them.
_FLOW_COMMANDS = frozenset({"discover", "prelabel", "harvest", "active-learning", "demo"})


def _attended(args: argparse.Namespace) -> contextlib.AbstractContextManager[None]:
    from flows.terminal import attended_runs

    return attended_runs() if args.command in _FLOW_COMMANDS else contextlib.nullcontext()


def _configure_logging(args: argparse.Namespace) -> None:
    from flows.terminal import configure_logging

    models = args.command in {"prelabel", "active-learning", "demo", "finetune"}
    configure_logging(args.verbose, settings_of(args).data_dir / "logs", models=models)


if __name__ == "__main__":
    raise SystemExit(main())
