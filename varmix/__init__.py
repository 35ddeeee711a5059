"""varmix: reproducible VarMixup (mixup in the latent space of a VAE).

Modules, one job each:

- ``varmix.config``       params.yaml loading and validation (one config object, checked at the edge)
- ``varmix.data``         datasets: raw formats, prepared ``.npy`` folders, clear errors
- ``varmix.io``           atomic file writes and checkpoint helpers
- ``varmix.vae``          the MMD-VAE (InfoVAE) and its KL ablation
- ``varmix.mixing``       ERM, Mixup, Mixup-R, Manifold Mixup, CutMix, VarMixup
- ``varmix.models``       ResNet-34, PreAct ResNet-18, a small CNN; all support manifold mixup
- ``varmix.train``        one trainer for every method, resumable
- ``varmix.corruptions``  the CIFAR-10-C corruptions as batched torch ops
- ``varmix.robustness``   corruption evaluation (grid, mean, mCE, calibration under shift)
- ``varmix.calibration``  ECE/MCE/NLL/Brier, reliability diagrams, temperature scaling
- ``varmix.landscape``    local linearity and loss surfaces
"""

__version__ = "0.1.0"
