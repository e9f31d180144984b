"""The Django settings module of the Label Studio that maskloop starts: Label Studio's own settings, less the one
middleware that is pure cost with analytics off.

Label Studio's ``ContextLogMiddleware`` parses every request body as JSON (for its usage analytics) before the API
parses it again; with ``COLLECT_ANALYTICS=false``, which maskloop sets, it sends nothing and the parse is wasted.
For a pre-label import that is ~440 KB of JSON per photo: 2.3 ms of Label Studio's CPU per photo, ~7 %
(docs/prelabel-throughput.md). The module is written into the server's data directory (owner-only) and named by
``DJANGO_SETTINGS_MODULE``, which ``label-studio start`` honours; a Label Studio that maskloop did not start is
left as it is."""

from __future__ import annotations

import os
from pathlib import Path

MODULE = "maskloop_label_studio_settings"
DIR_NAME = "maskloop-settings"
DROPPED_MIDDLEWARE = ("core.middleware.ContextLogMiddleware",)
_TEXT = f'''"""Written by maskloop (storage/labelstudio/server_settings.py); rewritten at every start."""

import os

_OURS = os.environ.get("DJANGO_SETTINGS_MODULE")
# Label Studio's settings read django.conf.settings while they load (its Sentry set-up): that nested read must see
# Label Studio's own, partly loaded module, as it does when Label Studio runs on its own settings.
os.environ["DJANGO_SETTINGS_MODULE"] = "label_studio.core.settings.label_studio"
try:
    from label_studio.core.settings.label_studio import *  # noqa: F403
finally:
    if _OURS is not None:
        os.environ["DJANGO_SETTINGS_MODULE"] = _OURS

MIDDLEWARE = [m for m in MIDDLEWARE if m not in {DROPPED_MIDDLEWARE!r}]  # noqa: F405
'''


def settings_env(data_dir: Path, inherited_pythonpath: str | None) -> dict[str, str]:
    """Write the settings module under ``data_dir`` and return the variables that make Label Studio use it."""
    folder = data_dir / DIR_NAME
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"{MODULE}.py"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(_TEXT)
    return {
        "DJANGO_SETTINGS_MODULE": MODULE,
        "PYTHONPATH": os.pathsep.join(p for p in (str(folder), inherited_pythonpath) if p),
    }
