"""nbval runs notebooks/ in order with their defaults (the smoke profile). 02_train trains every arm and
seed, with the VAE of every VAE seed (01_vae's defaults train the first) and adv_varmixup's adversarial
VAE (01_vae with vae = adversarial); 08_regime reads the regime chapter's runs (02_train with regime).
No notebook's defaults produce them: train them once, into the same VARMIX_WORKDIR, before the first cell
of the notebook that needs them, as dvc.yaml orders the stages (and as `make notebooks`,
runner.refresh_notebooks, does)."""
from __future__ import annotations

_done: set[str] = set()


def pytest_runtest_setup(item):
    from varmix.pipeline import runner

    needs = {"02_train.ipynb": runner.train_vaes_for_nbval, "08_regime.ipynb": runner.train_regime_for_nbval}
    name = item.path.name
    if name in needs and name not in _done:
        needs[name]()
        _done.add(name)
