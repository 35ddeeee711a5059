"""varmix: reproducible VarMixup (mixup in the latent space of a VAE).

Modules, one job each:

- ``varmix.core.config``       params.yaml loading and validation (one config object, checked at the edge)
- ``varmix.learn.data``         datasets: raw formats, prepared ``.npy`` folders, clear errors
- ``varmix.core.io``           atomic file writes and checkpoint helpers
- ``varmix.learn.vae``          the MMD-VAE (InfoVAE) and its KL ablation
- ``varmix.learn.mixing``       ERM, Mixup, Mixup-R, Manifold Mixup, CutMix, VarMixup
- ``varmix.learn.models``       ResNet-34, PreAct ResNet-18, a small CNN; all support manifold mixup
- ``varmix.learn.train``        one trainer for every method, resumable
- ``varmix.evaluate.corruptions``  the CIFAR-10-C corruptions as batched torch ops
- ``varmix.evaluate.robustness``   corruption evaluation (grid, mean, mCE, calibration under shift)
- ``varmix.evaluate.calibration``  ECE/MCE/NLL/Brier, reliability diagrams, temperature scaling
- ``varmix.evaluate.landscape``    local linearity and loss surfaces
"""

__version__ = "0.1.0"
