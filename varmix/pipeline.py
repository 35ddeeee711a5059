"""Where the pipeline's files live, and the common start of every notebook.

The same layout is spelled out in dvc.yaml (``runs/${dataset}/${profile}/...`` and
``results/${dataset}/${profile}/...``); ``tests/test_pipeline.py`` checks the two agree.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from varmix import config, data
from varmix.io import project_root


@dataclass(frozen=True)
class Layout:
    root: Path
    dataset: str
    profile: str

    @property
    def runs(self) -> Path:  # checkpoints and trained models (DVC-cached)
        return self.root / "runs" / self.dataset / self.profile

    @property
    def results(self) -> Path:  # executed notebooks, metrics, plot data (committed)
        return self.root / "results" / self.dataset / self.profile

    @property
    def vae_dir(self) -> Path:
        return self.runs / "vae"

    def model_dir(self, method: str, seed: int) -> Path:
        return self.runs / "models" / f"{method}-s{seed}"

    def metrics(self, name: str) -> Path:
        return self.results / "metrics" / f"{name}.json"

    def plot_data(self, name: str) -> Path:
        return self.results / "plots" / f"{name}.csv"

    def figure(self, name: str) -> Path:
        return self.results / "figures" / f"{name}.png"


@dataclass(frozen=True)
class Session:
    """What a notebook needs: validated params, the layout, the data and the device."""

    params: config.Params
    layout: Layout
    device: torch.device

    def load_data(self) -> data.ImageData:
        return data.load(self.params.dataset, self.layout.root / self.params.data_dir)


def start(profile: str | None = None, dataset: str | None = None, device: str | None = None) -> Session:
    """Validate params.yaml (with the notebook's ``profile``/``dataset`` parameters) before any work,
    pick the device (CUDA when available) and fix torch's CPU threading for bit-for-bit repeatable runs."""
    root = project_root()
    params = config.load_params(root / "params.yaml", overrides={"profile": profile, "dataset": dataset})
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.use_deterministic_algorithms(dev.type == "cpu", warn_only=True)
    os.environ.setdefault("TQDM_DISABLE", "1")
    return Session(params, Layout(root, params.dataset, params.profile), dev)


def environment() -> dict[str, str]:
    """The machine a result came from, for the report."""
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else (platform.processor() or platform.machine())
    return {"torch": torch.__version__, "python": platform.python_version(), "device": dev,
            "threads": str(torch.get_num_threads())}
