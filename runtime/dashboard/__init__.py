"""The operator dashboard: static HTML, CSS and JavaScript modules in ``static/``, served at
``/ojs/admin/`` by :mod:`runtime.api.dashboard`. Everything it shows comes from the admin API."""

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
