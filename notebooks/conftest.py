"""nbval runs notebooks/ in order with their defaults (the smoke profile). 02_train trains every arm and
seed, with the VAE of every VAE seed (01_vae's defaults train the first) and adv_varmixup's adversarial
VAE (01_vae with vae = adversarial), which no notebook's defaults produce: train them once, into the same VARMIX_WORKDIR, before 02_train's first
cell, as dvc.yaml orders the stages (and as `make notebooks`, runner.refresh_notebooks, does)."""
from __future__ import annotations

_done = False


def pytest_runtest_setup(item):
    global _done
    if not _done and item.path.name == "02_train.ipynb":
        from varmix.pipeline import runner

        runner.train_vaes_for_nbval()
        _done = True
