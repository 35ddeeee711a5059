"""Tiny training runs for tests/test_distributed.py, in a fresh process: ``python tests/ddp_run.py OUT
--methods M1,M2 --processes P [--optimizer sgd]`` trains each method into OUT/<method> and prints the
summaries as JSON.

Each run trains small_cnn (seed 3, 2 epochs, cosine schedule) on the first 101 Fashion-MNIST training
images (batches of 32: three full ones and a last of 5, which 2 processes split 3 + 2) and evaluates on 32
test images with varmix.learn.train's train_classifier, on the CPU with one thread and the project's portable
kernels (AVX2, oneDNN off: varmix.pipeline.session.CPU_KERNELS, config.Profile.cpu_kernels), so its bytes are the
same on every x86-64 machine with AVX2. With ``--processes`` > 1 train_classifier itself starts torchrun
(varmix.learn.distributed.launch)."""

import argparse
import dataclasses
import json
import os
import sys

# the portable kernels: torch reads these at its first CPU op
os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
os.environ.setdefault("MKL_CBWR", "AVX2")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from varmix.core.config import TrainConfig
from varmix.core.names import METHODS  # noqa: E402
from varmix.learn import train  # noqa: E402
from varmix.learn.data import ImageData, load_raw  # noqa: E402

N_TRAIN, N_TEST, BATCH, SEED = 101, 32, 32, 3
SGD_LR = 0.05


def tiny_data() -> ImageData:
    d = load_raw("fashion-mnist")
    return ImageData(d.name, d.train_x[:N_TRAIN], d.train_y[:N_TRAIN], d.test_x[:N_TEST], d.test_y[:N_TEST])


def tiny_cfg(epochs: int = 2, processes=1, optimizer: str = "adam") -> TrainConfig:
    cfg = TrainConfig(arch="small_cnn", batch_size=BATCH, epochs={m: epochs for m in METHODS},
                      alpha={m: 1.0 for m in METHODS}, mix_prob={m: 1.0 for m in METHODS},
                      schedule="cosine", channels_last=False, manifold_layers=(1, 2), optimizer=optimizer,
                      lr=SGD_LR if optimizer == "sgd" else 1e-3)
    return dataclasses.replace(cfg, processes=processes)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--methods", default="mixup")
    p.add_argument("--processes", default="1")
    p.add_argument("--optimizer", default="adam")
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    processes = int(a.processes) if a.processes.lstrip("-").isdigit() else a.processes
    data = tiny_data()
    summaries = [train.train_classifier(m, tiny_cfg(2, processes, a.optimizer), data, os.path.join(a.out, m),
                                        seed=SEED, device="cpu", progress=False) for m in a.methods.split(",")]
    json.dump(summaries, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
