"""Benchmark (not a test): VAE settings on Fashion-MNIST against the gate's two measures.

For each setting: train the VAE (varmix.learn.vae.train_vae), measure the test PSNR (reconstruction_metrics)
and the probe's clean test accuracy (varmix.learn.gate.recon_probe: a small CNN trained only on reconstructions
of the first probe_subset training images), and the seconds of each, then print a table. Runs as the
study does on the CPU: ``cpu_kernels: portable`` (oneDNN off) and 2 threads.

    python benchmarks/vae_quality.py [--only NAME ...] [--out DIR] [--threads N]

Measured 2026-11-25 on a shared, busy 2-core AMD EPYC (AVX2, no AVX-512), one setting per process with
--threads 1 (several at once). The CPU seconds are what an idle machine's wall time is: an idle 2-thread
run of the width-16 VAE took 17.5 s per 10,000 images, the same as one thread's CPU time (with oneDNN
off, a second thread does not speed up these small convolutions). Probe: 3 epochs on 10,000 images.

| setting | PSNR (dB) | probe accuracy | VAE s (CPU s) | probe s (CPU s) |
|---|---|---|---|---|
| real_images (the probe on the data, no VAE) | - | 0.8059 | - | 559 (101) |
| l32_w32_e4_20k_cos2e-3 | 19.79 | 0.6685 | 1636 (392) | 242 (111) |
| l32_w16_e3_60k_cos2e-3 | 20.41 | 0.6801 | 1417 (326) | 308 (96) |
| l32_w16_e4_60k_cos2e-3 | 20.89 | 0.7047 | 1151 (419) | 94 (94) |
| l32_w16_e4_20k_cos2e-3 | 18.62 | 0.5142 | 151 (150) | 103 (88) |
| l32_w16_e3_30k_cos2e-3 | 19.05 | 0.6151 | 155 (154) | 107 (88) |
| l32_w16_e4_20k_b32_cos1e-3 | 19.77 | 0.6591 | 169 (153) | 97 (96) |
| l32_w16_e3_30k_b32_cos1e-3 (chosen: default profile) | 19.99 | 0.6508 | 187 (173) | 99 (99) |
| the same, --threads 2 (machine nearly idle, load ~1-2) | 19.99 | 0.6588 | 198 (392) | 66 (127) |

"today" (latent 16, width 32, batch 128, 4 epochs on 20k) was not rerun: 19.06 dB in the committed
default results (metrics/vae.json, oneDNN on); it costs as much as l32_w32_e4_20k. 22 dB was reached by
none within ~4 minutes; the steps per epoch (batch 32) and the images seen matter most.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from varmix.core.config import VAEConfig
from varmix.learn import data as data_lib
from varmix.learn import gate
from varmix.learn import vae as vae_lib
from varmix.learn.train import train_classifier

BASE = dict(objective="mmd", gamma=100.0, likelihood="bce", batch_size=128, lr=1e-3,
            probe_epochs=3, probe_subset=10_000)
# name -> overrides of BASE; "today" is the default profile before the gate
SETTINGS = {
    "today": dict(latent_dim=16, width=32, epochs=4, train_subset=20_000),
    "l32_w32_e4_20k_cos2e-3": dict(latent_dim=32, width=32, epochs=4, train_subset=20_000, lr=2e-3,
                                   lr_schedule="cosine"),
    "l32_w16_e3_60k_cos2e-3": dict(latent_dim=32, width=16, epochs=3, train_subset=60_000, lr=2e-3,
                                   lr_schedule="cosine"),
    "l32_w16_e4_20k_cos2e-3": dict(latent_dim=32, width=16, epochs=4, train_subset=20_000, lr=2e-3,
                                   lr_schedule="cosine"),
    "l32_w16_e3_30k_cos2e-3": dict(latent_dim=32, width=16, epochs=3, train_subset=30_000, lr=2e-3,
                                   lr_schedule="cosine"),
    "l32_w16_e4_20k_b32_cos1e-3": dict(latent_dim=32, width=16, epochs=4, train_subset=20_000, batch_size=32,
                                       lr=1e-3, lr_schedule="cosine"),
    "l32_w16_e3_30k_b32_cos1e-3": dict(latent_dim=32, width=16, epochs=3, train_subset=30_000, batch_size=32,
                                       lr=1e-3, lr_schedule="cosine"),
    "l32_w16_e4_60k_cos2e-3": dict(latent_dim=32, width=16, epochs=4, train_subset=60_000, lr=2e-3,
                                   lr_schedule="cosine"),
}


def measure(name: str, cfg: VAEConfig, d: data_lib.ImageData, root: Path) -> dict:
    out = root / name
    t0, c0 = time.perf_counter(), time.process_time()
    vae = vae_lib.train_vae(cfg, d.train_x, d.test_x, out / "vae", seed=0, device="cpu", progress=False)
    t_vae, c_vae = time.perf_counter() - t0, time.process_time() - c0
    psnr = vae_lib.reconstruction_metrics(vae, d.test_x)["psnr"]
    t1, c1 = time.perf_counter(), time.process_time()
    probe = gate.recon_probe(vae, d, cfg, seed=0, device="cpu", out_dir=out / "vae" / gate.PROBE_DIR,
                                progress=False)
    t_probe, c_probe = time.perf_counter() - t1, time.process_time() - c1
    return {"setting": name, "psnr": psnr, "probe_acc": probe["recon_probe_accuracy"],
            "vae_s": t_vae, "probe_s": t_probe, "vae_cpu_s": c_vae, "probe_cpu_s": c_probe}


def real_images(d: data_lib.ImageData, root: Path) -> dict:
    """The probe's ceiling: the same classifier trained on the real images instead of reconstructions."""
    cfg = VAEConfig(**BASE)
    n = cfg.probe_subset
    t0, c0 = time.perf_counter(), time.process_time()
    summary = train_classifier("erm", gate.probe_config(cfg), d.subset(n), root / "real_images", seed=0,
                               device="cpu", progress=False)
    return {"setting": REAL, "psnr": float("inf"), "probe_acc": summary["test_acc"], "vae_s": 0.0,
            "probe_s": time.perf_counter() - t0, "vae_cpu_s": 0.0, "probe_cpu_s": time.process_time() - c0}


REAL = "real_images"  # the probe on the data itself (no VAE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="settings to run (default: all)")
    ap.add_argument("--out", help="folder for the runs (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the study: 2)")
    args = ap.parse_args()
    torch.backends.mkldnn.enabled = False  # cpu_kernels: portable, as the study
    torch.set_num_threads(args.threads)
    d = data_lib.load("fashion-mnist", "data")
    names = args.only or [REAL, *SETTINGS]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        for name in names:
            if name == REAL:
                rows.append(real_images(d, root))
            else:
                rows.append(measure(name, VAEConfig(**{**BASE, **SETTINGS[name]}), d, root))
            r = rows[-1]
            print(f"{r['setting']:32s} psnr {r['psnr']:6.2f} dB  probe {r['probe_acc']:.4f}  "
                  f"vae {r['vae_s']:6.1f} s ({r['vae_cpu_s']:6.1f} cpu s)  probe {r['probe_s']:5.1f} s "
                  f"({r['probe_cpu_s']:5.1f} cpu s)", flush=True)
    print("\n| setting | PSNR (dB) | probe accuracy | VAE s (CPU s) | probe s (CPU s) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['psnr']:.2f} | {r['probe_acc']:.4f} | {r['vae_s']:.0f} "
              f"({r['vae_cpu_s']:.0f}) | {r['probe_s']:.0f} ({r['probe_cpu_s']:.0f}) |")


if __name__ == "__main__":
    main()
