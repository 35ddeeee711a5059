"""A timed slice of the ``paper`` profile: its VAE and a few arms, each for a few epochs of the real
trainer on the real data, to measure seconds per epoch on this device and project the full profile's
wall time (its epochs x seeds x arms). Prints one markdown table. Not a result of the study: the models
are trained for --epochs only and written to a temporary folder.

    python benchmarks/paper_slice.py --device cuda                    # ERM and VarMixup, 2 epochs each
    python benchmarks/paper_slice.py --device cpu --subset 512 --epochs 1   # a quick check of the script
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from varmix.learn.train import VAE_METHODS, train_run  # noqa: E402
from varmix.learn.vae import train_vae  # noqa: E402
from varmix.pipeline import session


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--arms", default="erm,varmixup", help="comma-separated arms of params.yaml")
    p.add_argument("--epochs", type=int, default=2, help="epochs timed per model (default 2)")
    p.add_argument("--subset", type=int, default=None, help="train/test images (default: all)")
    args = p.parse_args(argv)

    s = session.start("paper", args.dataset, device=args.device)
    d = s.load_data()
    if args.subset:
        d = dataclasses.replace(d, train_x=d.train_x[:args.subset], train_y=d.train_y[:args.subset],
                                test_x=d.test_x[:args.subset], test_y=d.test_y[:args.subset])
    name = torch.cuda.get_device_name(s.device) if s.device.type == "cuda" else "CPU"
    print(f"# paper profile slice: {args.dataset}, {len(d.train_x):,} train / {len(d.test_x):,} test images, "
          f"torch {torch.__version__}, device {s.device} ({name})\n")
    rows, projected = [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vcfg = dataclasses.replace(s.params.vae, epochs=args.epochs)
        t0 = time.perf_counter()
        vae = train_vae(vcfg, d.train_x, d.test_x, tmp / "vae", seed=0, device=s.device, progress=False,
                        timings=tmp / "vae-times.json")
        sec = time.perf_counter() - t0
        per_epoch = sec / args.epochs
        full = s.params.vae.epochs * per_epoch
        projected += full
        rows.append(("vae", "vae", args.epochs, f"{per_epoch:.1f}", "—", s.params.vae.epochs, 1, f"{full / 60:.1f}"))
        for arm in args.arms.split(","):
            run = s.params.run_settings(arm)
            method, full_epochs = run.method, run.epochs
            summary = train_run(dataclasses.replace(run, epochs=args.epochs), d, tmp / arm, 0,
                                vae=vae if method in VAE_METHODS else None, device=s.device, progress=False,
                                timings=tmp / f"{arm}-times.json")
            times = json.loads((tmp / f"{arm}-times.json").read_text())
            epoch_s = [e["seconds"] for e in times] if isinstance(times, list) else None
            per_epoch = summary["seconds"] / args.epochs
            if epoch_s and len(epoch_s) > 1:  # the first epoch carries cuDNN's autotuning: time the rest
                per_epoch = sum(epoch_s[1:]) / len(epoch_s[1:])
            seeds = len(s.params.seeds_of(arm) if arm in s.params.arms else s.params.seeds)  # rivals: rival_seeds
            full = full_epochs * per_epoch * seeds
            projected += full
            rows.append((arm, method, args.epochs, f"{per_epoch:.1f}", f"{summary['test_acc']:.4f}", full_epochs,
                         seeds, f"{full / 60:.1f}"))
    head = ("model", "method", "epochs run", "s / epoch", f"test acc after {args.epochs}", "paper epochs",
            "seeds", "projected min")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in rows:
        print("| " + " | ".join(map(str, r)) + " |")
    print(f"\nprojected for these models at the paper's epochs and seeds: {projected / 3600:.2f} h on this device "
          "(s / epoch: training only, from the epochs after the first, which carries cuDNN autotuning)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
