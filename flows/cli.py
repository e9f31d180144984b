"""The ``maskloop`` command line. Builds the one Settings object and hands it to flows and storage."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from storage.settings import Settings
from storage.stack.process import PortInUseError


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
    stack = Stack(settings.data_dir)
    if args.action == "up":
        statuses = stack.up(label_studio=not args.no_label_studio)
    elif args.action == "down":
        stopped = stack.down()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing (no service started by maskloop is running)"))
        return 0
    else:
        statuses = stack.status()
    for status in statuses:
        state = "running" if status.running else "stopped"
        print(f"{status.name:<14} {state:<8} {status.url} {status.detail}".rstrip())
    print(
        f"S3 credentials {settings.data_dir / 'credentials.json'} (owner-only; access key {stack.credentials.s3_access_key_id})"
    )
    ls_creds = stack.label_studio().data_dir / "credentials.json"
    if ls_creds.exists():
        print(f"Label Studio   login and token in {ls_creds} (owner-only)")
    return 0


def cmd_discover(args: argparse.Namespace) -> int:
    from flows.discover import discover_flow

    report = discover_flow(args.source, settings=_stack_settings(args))
    print(
        f"listed {report.listed}, new {len(report.new_asset_ids)} ({report.new_revisions} new revisions), unchanged {report.unchanged}"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.demo import run_demo

    return run_demo(_settings(args), keep_running=not args.stop_after)


def cmd_finetune(args: argparse.Namespace, rest: Sequence[str]) -> int:
    from model.finetune.cli import main as finetune_main

    return int(finetune_main(list(rest)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskloop", description="S3 -> SAM 2 -> Label Studio -> versioned datasets")
    parser.add_argument("--data-dir", help="state directory (default: $MASKLOOP_DATA_DIR or ~/.maskloop)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="catalog database")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="migrate the catalog to the latest schema").set_defaults(func=cmd_db_upgrade)

    stack = sub.add_parser("stack", help="local S3 server + Label Studio on 127.0.0.1")
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.add_argument("--no-label-studio", action="store_true", help="start only the S3 server")
    stack.set_defaults(func=cmd_stack)

    disc = sub.add_parser("discover", help="record new objects under s3://bucket/prefix in the catalog")
    disc.add_argument("source")
    disc.set_defaults(func=cmd_discover)

    demo = sub.add_parser("demo", help="run the whole job on the embedded defaults")
    demo.add_argument("--stop-after", action="store_true", help="stop the stack when done")
    demo.set_defaults(func=cmd_demo)

    sub.add_parser("finetune", help="fine-tune SAM 2 (see `maskloop finetune --help`)", add_help=False).set_defaults(
        func=None
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if "finetune" in argv:
        head = argv[: argv.index("finetune")]
        args = parser.parse_args([*head, "finetune"])
        _configure_logging(args.verbose)
        return cmd_finetune(args, argv[argv.index("finetune") + 1 :])
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except (PortInUseError, TimeoutError, FileNotFoundError, PermissionError) as error:
        print(f"maskloop {args.command}: {error}", file=sys.stderr)
        return 2


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "httpx", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


if __name__ == "__main__":
    raise SystemExit(main())
