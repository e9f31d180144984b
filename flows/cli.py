"""The ``maskloop`` command line. Builds the one Settings object and hands it to flows and storage."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from flows.options import add_options, params_from
from model.errors import MaskloopError
from model.strategies import STRATEGIES
from storage.params import HarvestParams, PrelabelParams
from storage.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    return Settings(**overrides)  # type: ignore[arg-type]


def _stack_settings(args: argparse.Namespace) -> Settings:
    """Settings, with the local stack's endpoints/credentials when the user configured no S3/Label Studio."""
    from storage.stack.manager import Stack

    settings = _settings(args)
    return Stack(settings.data_dir).settings(settings)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from storage.catalog import Catalog
    from storage.catalog.db import current_revision

    catalog = Catalog(_settings(args).resolved_database_url)
    print(f"catalog {catalog!r} at revision {current_revision(catalog.engine)}")
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    from storage.stack.manager import Stack

    settings = _settings(args)
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

    report = discover_flow(args.source, settings=_stack_settings(args))
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
    with Catalog(_settings(args).resolved_database_url) as catalog:
        rows = skipped_objects(catalog, bucket, prefix)
    for row in rows:
        print(f"{row.uri}  {row.size} bytes  {row.reason}")
    print(f"{len(rows)} objects under {args.source} skipped as not images or videos")
    return 0


def cmd_prelabel(args: argparse.Namespace) -> int:
    from flows.prelabel import prelabel_flow
    from storage.params import PrelabelParams

    result = prelabel_flow(params_from(args, PrelabelParams), settings=_stack_settings(args))
    c = result.count
    print(
        f"run {result.run_id} (job {result.job_id}): {c('done')}/{c('assets')} assets pre-labelled, "
        f"{c('failed')} failed, {c('instances')} instances, {result.timings.get('assets_per_s', 0.0)} assets/s "
        f"({result.model_version})"
    )
    if c("refreshed") or c("kept"):
        print(f"existing tasks: {c('refreshed')} got the new prediction, {c('kept')} already annotated were left alone")
    if c("failed"):
        print(f"failures: maskloop runs show {result.run_id}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from storage.catalog import Asset, Catalog, Run, RunFailure

    catalog = Catalog(_settings(args).resolved_database_url)
    with catalog.session() as session:
        if args.run_id is None:
            for run in session.scalars(select(Run).order_by(Run.id.desc()).limit(args.last)):
                print(
                    f"{run.id:>5} {run.flow_name:<10} {run.status:<10} {run.started_at:%Y-%m-%d %H:%M:%S} {run.model_id or '-'} {run.counts}"
                )
            return 0
        found = session.get(Run, args.run_id)
        if found is None:
            print(f"no run {args.run_id}", file=sys.stderr)
            return 1
        run = found
        print(f"run {run.id} ({run.flow_name}, flow run {run.flow_run_id}): {run.status}")
        print(f"  started {run.started_at}, finished {run.finished_at}")
        print(f"  model {run.model_id} sha256 {run.checkpoint_sha256}")
        print(f"  parameters {run.parameters}")
        print(f"  counts {run.counts} timings {run.timings}")
        failures = (
            session.execute(
                select(RunFailure, Asset)
                .join(Asset, Asset.id == RunFailure.asset_id)
                .where(RunFailure.run_id == run.id)
            )
            .tuples()
            .all()
        )
        print(f"  failures: {len(failures)}")
        for failure, asset in failures:
            print(f"    {asset.uri} [{failure.stage}, {failure.kind}] {failure.reason}")
        if any(f.kind == "permanent" for f, _ in failures):
            print("  (transient failures are retried by the job's next run; permanent ones with --retry-failed)")
    if args.report:
        from storage.run_report import write_report

        path = write_report(catalog, _settings(args).cache_dir, run.id, Path(args.report))
        print(f"report: {path.resolve()}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from storage.catalog import Catalog, jobs

    catalog = Catalog(_settings(args).resolved_database_url)
    try:
        found = jobs.summaries(catalog, args.job_id if args.action == "show" else None)
        if args.action == "show" and not found:
            print(f"no job {args.job_id}", file=sys.stderr)
            return 1
        if args.action == "list":
            print(f"{'job':>5}  {'covered':>7} {'pending':>7} {'failed':>6}  project / model version")
        for job in found:
            failed = job.failed_transient + job.failed_permanent
            if args.action == "list":
                print(
                    f"{job.id:>5}  {job.covered:>7} {job.pending:>7} {failed:>6}  {job.project} / {job.model_version}"
                )
                continue
            print(f"job {job.id}: project {job.project!r}, model version {job.model_version}")
            print(
                f"  sources {', '.join(job.sources) or '-'}; {job.runs} runs; last run {job.updated_at:%Y-%m-%d %H:%M:%S}"
            )
            print(f"  covered {job.covered}, pending {job.pending}, failed {failed}", end="")
            print(f" ({job.failed_transient} transient: retried next run; {job.failed_permanent} permanent)")
            for uri, kind, stage, reason in jobs.failures(catalog, job.id):
                print(f"    {uri} [{stage}, {kind}] {reason}")
    finally:
        catalog.dispose()
    return 0


def cmd_harvest(args: argparse.Namespace) -> int:
    from flows.harvest import harvest_flow
    from storage.params import HarvestParams

    result = harvest_flow(params_from(args, HarvestParams), settings=_stack_settings(args))
    h = result.harvest
    print(
        f"run {result.run_id}: {h.tasks_seen} tasks seen, {h.created} new and {h.updated} changed annotations, "
        f"{h.skipped} skipped, {len(h.invalid)} invalid, {h.agreement_rows} agreement rows"
    )
    for ann_id, reason in h.invalid.items():
        print(f"  invalid annotation {ann_id}: {reason}")
    if result.version is not None:
        v = result.version
        print(f"dataset {v.dataset} v{v.number} (id {v.version_id}, {'new' if v.created else 'unchanged'})")
    return 0


def cmd_active_learning(args: argparse.Namespace) -> int:
    from flows.active_learning import active_learning_flow
    from storage.params import ActiveLearningParams

    params = params_from(args, ActiveLearningParams)
    result = active_learning_flow(params, settings=_stack_settings(args))
    m = result.metrics
    print(
        f"round {result.round} (run {result.run_id}): {m['corrected_items']} corrected items, "
        f"{m['train_items']} train / {m['held_out_items']} held out"
    )
    if "finetune" in m:
        ft = m["finetune"]
        print(f"  fine-tuned {ft['model_version']} ({ft['steps']} steps, {ft['seconds']:.0f} s)")
    else:
        print(f"  no fine-tuning: {m.get('finetune_skipped', '-')}")
    held = m.get("held_out")
    if held:
        old, new = held["old"], held["new"]
        print(
            f"  held-out mean IoU {old['mean_iou']:.3f} -> {new['mean_iou']:.3f}, "
            f"accepted unchanged {old['accepted_rate']:.3f} -> {new['accepted_rate']:.3f}"
        )
    print(
        f"  new model promoted; re-pre-labelled {m.get('relabelled', 0)} tasks as {m.get('model_version')}"
        if result.promoted
        else f"  model kept ({m.get('not_promoted', 'no new model')})"
    )
    weights = m.get("confidence_weights") or {}
    print(f"  uncertainty signal weights: {weights.get('source')} {weights.get('weights') or ''}".rstrip())
    pool = m["pool"]
    print(
        f"  pool of {pool['items']} tasks scored with {pool['scored_with']} ({params.strategy}); "
        f"review next: {result.chosen_tasks[:20]}{' ...' if len(result.chosen_tasks) > 20 else ''}"
    )
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    from storage.catalog import Catalog
    from storage.s3 import make_client
    from storage.versions import describe, diff_versions, export_version, get_version, list_versions, write_preview

    settings = _stack_settings(args)
    catalog = Catalog(settings.resolved_database_url)
    try:
        if args.action == "create":
            from storage.annotation import find_project
            from storage.annotation.registry import DEFAULT_BACKEND
            from storage.versions import create_version

            if not args.project or not args.dest:
                raise SystemExit("maskloop versions create: --project and --dest s3://bucket/prefix are required")
            row = find_project(catalog, args.project, backend=DEFAULT_BACKEND, url=settings.label_studio_url)
            made = create_version(
                catalog,
                make_client(settings),
                row,
                args.dest,
                dataset=args.dataset,
                tag=args.tag,
                polygons=args.polygons,
            )
            print("\n".join(describe(made.version)))
            print("created" if made.created else "unchanged: the same data is already this version")
            for key, reason in made.skipped.items():
                print(f"  left out {key}: {reason}")
        elif args.action == "list":
            for v in list_versions(catalog, args.dataset):
                c = v.counts
                print(
                    f"{v.id:>5} {v.dataset} v{v.number:<4} {v.tag or '-':<12} {v.created_at:%Y-%m-%d %H:%M:%S} "
                    f"images {c.get('images', 0)} videos {c.get('videos', 0)} instances {c.get('instances', 0)} {v.manifest_hash[:12]}"
                )
        elif args.action == "show":
            print("\n".join(describe(get_version(catalog, _one_id(args)))))
            if args.preview:
                print(f"preview: {write_preview(catalog, make_client(settings), _one_id(args), Path(args.preview))}")
        elif args.action == "diff":
            if len(args.ids) != 2:
                raise SystemExit("maskloop versions diff: expects two version ids A B")
            diff = diff_versions(catalog, args.ids[0], args.ids[1])
            for name in ("added", "removed", "changed"):
                items = getattr(diff, name)
                print(f"{name}: {len(items)}")
                for key in items:
                    print(f"  {key}")
            print("per-class deltas: " + (", ".join(f"{c} {d:+d}" for c, d in diff.class_deltas.items()) or "none"))
        elif args.action == "export":
            if not args.out:
                raise SystemExit("maskloop versions export: --out DIR is required")
            result = export_version(
                catalog, make_client(settings), _one_id(args), Path(args.out), fmt=args.format, images=args.images
            )
            print("\n".join(result.summary_lines()))
            if result.sha256_mismatches:
                return 1
    except LookupError as error:
        print(f"maskloop versions {args.action}: {error}", file=sys.stderr)
        return 1
    finally:
        catalog.dispose()
    return 0


def _one_id(args: argparse.Namespace) -> int:
    if len(args.ids) != 1:
        raise SystemExit(f"maskloop versions {args.action}: expects one version id")
    return int(args.ids[0])


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.demo import run_demo

    return run_demo(_settings(args), keep_running=not args.stop_after)


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

    sqs = make_sqs_client(_settings(args), args.sqs_endpoint_url)
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

    ver = sub.add_parser("versions", help="immutable dataset versions: create, list, show, diff, export")
    ver.add_argument("action", choices=["create", "list", "show", "diff", "export"])
    ver.add_argument("ids", type=int, nargs="*", help="version id (show, export) or two (diff)")
    ver.add_argument("--project", help="create: catalog project name")
    ver.add_argument("--dest", help="create: s3://bucket/prefix for the COCO export and manifest")
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
        with _stack_prefect_api(args):
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

    url = stack_api_url(_settings(args).data_dir)
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


def _configure_logging(args: argparse.Namespace) -> None:
    from flows.terminal import configure_logging

    models = args.command in {"prelabel", "active-learning", "demo", "finetune"}
    configure_logging(args.verbose, _settings(args).data_dir / "logs", models=models)


if __name__ == "__main__":
    raise SystemExit(main())
