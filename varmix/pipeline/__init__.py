"""The top layer: running the study. ``session`` is what a notebook starts (params, folders, device, the
run names); ``runner`` executes a chapter's notebook with papermill (a dvc stage); ``cli`` is
``python -m varmix``; ``verify`` checks the prepared data and ``envlock`` the installed packages.

The notebooks' interface, importable as ``from varmix import pipeline``: ``pipeline.start(profile, dataset)``
and the run names."""

from varmix.core.names import regime_run_name, run_name, vae_name
from varmix.pipeline.session import Session, environment, start

__all__ = ["Session", "environment", "regime_run_name", "run_name", "start", "vae_name"]
