"""The paper's reported numbers (Mangla et al., VarMixup, CVPR 2021 AML-CV workshop camera-ready), for
the report to set beside ours. Means ± std over 10 trials; ECE and local linearity were read off the
paper's figures (ECE ±0.003). None marks a value the paper does not give."""

from __future__ import annotations

# mean corruption accuracy (15 corruptions x 5 severities), std, clean accuracy; in %
CORRUPTION_ACCURACY = {
    "cifar10": {
        "erm": (69.29, 0.21, 94.5), "mixup": (74.74, 0.34, 95.5), "mixup_r": (74.27, 0.22, 89.88),
        "manifold_mixup": (72.54, 0.14, 95.2), "at": (73.12, 0.31, 85.58), "trades": (75.46, 0.21, 88.11),
        "iat": (81.05, 0.42, 89.7), "varmixup": (82.57, 0.42, 93.91), "adv_varmixup": (82.12, 0.46, 92.19),
    },
    "cifar100": {
        "erm": (47.3, 0.32, 64.5), "mixup": (52.13, 0.43, 76.8), "mixup_r": (43.54, 0.15, 62.24),
        "manifold_mixup": (41.42, 0.23, 75.3), "at": (45.09, 0.31, 60.28), "trades": (45.98, 0.41, 63.3),
        "iat": (50.71, 0.25, 62.7), "varmixup": (52.57, 0.39, 73.2), "adv_varmixup": (54.0, 0.41, 72.13),
    },
    "tiny-imagenet": {
        "erm": (17.34, 0.27, 49.96), "mixup": (21.55, 0.37, 53.83), "mixup_r": (21.34, 0.32, 53.5),
        "at": (15.74, 0.36, 22.33), "trades": (16.20, 0.23, 26.12), "iat": (18.69, 0.45, None),
        "varmixup": (24.87, 0.32, 50.98), "adv_varmixup": (25.36, 0.21, 50.58),
    },
}

# expected calibration error (bar chart, 15 bins assumed)
ECE = {
    "cifar10": {"mixup": 0.132, "varmixup": 0.104, "adv_varmixup": 0.071},
    "cifar100": {"mixup": 0.137, "varmixup": 0.115, "adv_varmixup": 0.112},
}

# local linearity gamma(eps) of Qin et al., eps in units of 1/255 (read off a figure; "~" values approximate)
LINEARITY_EPS = (1, 2, 4, 8, 16)
LOCAL_LINEARITY = {
    "cifar10": {
        "mixup": (0.85, 2.86, 8.17, 13.06, 15.65),
        "varmixup": (0.8, 1.3, 3.09, 6.69, 10.05),
        "adv_varmixup": (0.46, 1.26, 2.77, 5.10, 8.04),
    },
    "cifar100": {
        "mixup": (1.93, 5.29, 11.65, 16.06, 17.95),
        "varmixup": (0.94, 1.61, 2.45, 4.20, 12.12),
        "adv_varmixup": (1.20, 2.47, 4.49, 9.55, 14.13),
    },
}

# FID / KID of the mixed samples against the training set (Inception features), read from the text
SAMPLE_DISTANCE = {
    "cifar10": {"mixup": (17.6, 0.013), "varmixup": (33.0, 0.030)},
    "cifar100": {"mixup": (14.3, 0.0075), "varmixup": (31.0, 0.028)},
}
