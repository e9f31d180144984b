"""``maskloop runs``, ``jobs`` and ``versions``: read (and for versions, write) the catalog."""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path

from flows.cli_settings import settings_of, stack_settings_of


def cmd_runs(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from storage.catalog import Asset, Catalog, Run, RunFailure

    catalog = Catalog(settings_of(args).resolved_database_url)
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

        path = write_report(catalog, settings_of(args).cache_dir, run.id, Path(args.report))
        print(f"report: {path.resolve()}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from storage.catalog import Catalog, jobs

    catalog = Catalog(settings_of(args).resolved_database_url)
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


def cmd_versions(args: argparse.Namespace) -> int:
    from storage.catalog import Catalog
    from storage.s3 import make_client
    from storage.version_export import export_version, write_preview
    from storage.version_reads import describe, diff_versions, get_version, list_versions

    settings = stack_settings_of(args)
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
        elif args.action == "gc":
            from storage.version_objects import gc_orphans

            if not args.dest:
                raise SystemExit("maskloop versions gc: --dest s3://bucket/prefix is required")
            deleted = gc_orphans(catalog, make_client(settings), args.dest, min_age=timedelta(seconds=args.min_age_s))
            for uri in deleted:
                print(f"deleted {uri}")
            print(f"{len(deleted)} object(s) under {args.dest} that no version references deleted")
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
