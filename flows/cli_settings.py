"""What every ``maskloop`` command builds first: the one Settings object (with the local stack's endpoints when the
user configured none)."""

from __future__ import annotations

import argparse
from pathlib import Path

from storage.settings import Settings


def settings_of(args: argparse.Namespace) -> Settings:
    overrides = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    return Settings(**overrides)  # type: ignore[arg-type]


def stack_settings_of(args: argparse.Namespace) -> Settings:
    """Settings, with the local stack's endpoints/credentials when the user configured no S3/Label Studio."""
    from storage.stack.manager import Stack

    settings = settings_of(args)
    return Stack(settings.data_dir).settings(settings)
