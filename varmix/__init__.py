"""varmix: reproducible VarMixup (mixup in the latent space of a VAE).

Layers, each a subpackage whose modules import only from their own layer or below (docs/ARCHITECTURE.md):
``varmix.core`` (names, params.yaml's schema, errors, atomic writes), ``varmix.learn`` (data, models, the
mixers, the VAE, the trainer), ``varmix.evaluate`` (corruptions, calibration, local linearity,
perturbations), ``varmix.study`` (statistics, the report, figures, the results site) and ``varmix.pipeline``
(the notebooks' session, the papermill runner, ``python -m varmix``).

The public API (docs/api.md): VarMixup in your own training loop. ``from varmix import ConvVAE, train_vae,
make_mixer, mixed_loss, build_model, ...`` re-exports the names in ``__all__`` from the modules above.
They are imported lazily (module-level ``__getattr__``, PEP 562): ``import varmix`` does not import
torch, so ``python -m varmix notebook ...`` (which only validates params.yaml) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it (each name's docstring is its module's)
_EXPORTS: dict[str, str] = {
    # the VAE (train it first, then it is frozen)
    "ConvVAE": "varmix.learn.vae",
    "VAEConfig": "varmix.core.config",
    "train_vae": "varmix.learn.vae",
    "save_vae": "varmix.learn.vae",
    "load_vae": "varmix.learn.vae",
    # the mixers: f(x, y, gen, *, num_classes, alpha, ...) -> MixedBatch, and their loss
    "MixedBatch": "varmix.learn.mixing",
    "make_mixer": "varmix.learn.mixing",
    "varmixup": "varmix.learn.mixing",
    "mixup": "varmix.learn.mixing",
    "mixup_r": "varmix.learn.mixing",
    "manifold_mixup": "varmix.learn.mixing",
    "cutmix": "varmix.learn.mixing",
    "erm": "varmix.learn.mixing",
    "sample_lambda": "varmix.learn.mixing",
    "mixed_loss": "varmix.learn.mixing",
    "soft_cross_entropy": "varmix.learn.mixing",
    "resize_images": "varmix.learn.mixing",
    # the classifiers and the trainer
    "build_model": "varmix.learn.models",
    "TrainConfig": "varmix.core.config",
    "ImageData": "varmix.learn.data",
    "to_float": "varmix.learn.data",
    "train_classifier": "varmix.learn.train",
    "load_classifier": "varmix.learn.train",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562) and cache the name in this module."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'varmix' has no attribute {name!r}: the public names are "
                             f"{', '.join(_EXPORTS)}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
