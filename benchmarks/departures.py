"""Departures from reference implementations, measured: the numbers of docs/DEPARTURES.md, as markdown tables.

1. Manifold Mixup's loss (``train.manifold_loss``). varmix trains every arm with the soft-target
   cross-entropy (``soft_ce``); vikasverma1077/manifold_mixup trains with ``BCELoss(softmax(logits),
   target)`` (``bce_softmax``). On real Fashion-MNIST batches mixed by varmix's own Manifold Mixup mixer
   (alpha 2, layers 0-2, as params.yaml), for a small_cnn at initialisation and after the ERM epoch of
   part 3, in train mode as in a training step: the ratio of the two loss values, of the norms of their
   gradients with respect to all weights, and the cosine between the gradients (mean, min and max over
   ``--batches`` batches of 128).
2. The effect of the loss on training: Manifold Mixup trained ``--epochs`` epochs on the
   ``--train-images`` images with each loss, under Adam (the paper's optimiser) and SGD (the reference's
   lr 0.1, momentum 0.9), test accuracy and loss on the first 2000 test images. One seed: it tells the
   size of the effect, not a significant difference.
3. γ(ε)'s inner maximisation (``eval.linearity_*``). A small_cnn trained with varmix's own trainer (ERM,
   Adam, 1 epoch on the first ``--train-images`` training images); γ on the first ``--images`` test images
   at ε = 2/255 and 8/255 for each search setting: the default (clipped ball, 10 steps of 2.5·ε/steps,
   1 start) and one switch changed at a time, plus all of them together. Every setting uses a generator
   seeded ``--seed`` (the same first start), so a restart run contains the 1-start run. Columns: mean γ,
   its ratio to the default's, and the share of images whose γ is below the default's (0 for restarts by
   construction; for the plain ball it says whether plain ≥ clipped holds per image).

    python benchmarks/departures.py                 # all three tables, ~4 min on a 2-core CPU
    python benchmarks/departures.py --batches 4 --images 32
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from varmix.core import (
    config,  # noqa: E402
    names,
)
from varmix.evaluate import landscape
from varmix.learn import mixing
from varmix.learn.data import load, to_float  # noqa: E402
from varmix.learn.models import build_model  # noqa: E402
from varmix.learn.train import load_classifier, resolve_device, train_classifier  # noqa: E402

EPS_255 = (2, 8)
# (label, clip, steps, step_factor, restarts); the first row is params.yaml's default
SEARCHES = (
    ("default: clipped, 10 steps, 2.5·ε/steps, 1 start", True, 10, 2.5, 1),
    ("plain ε-ball", False, 10, 2.5, 1),
    ("50 steps", True, 50, 2.5, 1),
    ("step 1.0·ε/steps", True, 10, 1.0, 1),
    ("5 restarts", True, 10, 2.5, 5),
    ("plain, 50 steps, 5 restarts", False, 50, 2.5, 5),
)


def loss_gradients(model: torch.nn.Module, mb: mixing.MixedBatch) -> dict[str, tuple[float, torch.Tensor]]:
    """Each training loss's value and its gradient over all parameters (flattened), on one mixed batch,
    the model in train mode as in ``train_step`` (a copy, so batch-norm statistics are left alone)."""
    out = {}
    for name in names.MANIFOLD_LOSSES:
        m = copy.deepcopy(model).train()
        logits = m(mb.x, mix_layer=mb.mix_layer, lam=mb.lam, perm=mb.perm)
        value = mixing.mixed_loss(name, logits.float(), mb.target)
        grads = torch.autograd.grad(value, [p for p in m.parameters()])
        out[name] = (float(value.detach()), torch.cat([g.flatten() for g in grads]).double())
    return out


def loss_table(models: dict[str, torch.nn.Module], data, batches: int, seed: int, dev) -> str:
    mixer = mixing.make_mixer("manifold_mixup", num_classes=data.num_classes, alpha=2.0, layers=(0, 1, 2))
    rows = ["| model | batches | soft_ce / bce_softmax value | ‖∇ soft_ce‖ / ‖∇ bce_softmax‖ | cosine(∇, ∇) |",
            "|---|---|---|---|---|"]
    for label, model in models.items():
        gen = torch.Generator().manual_seed(seed)
        ratios, norms, cosines = [], [], []
        for b in range(batches):
            x = to_float(data.train_x[b * 128:(b + 1) * 128]).to(dev)
            y = data.train_y[b * 128:(b + 1) * 128].to(dev)
            mb = mixer(x, y, gen)
            r = loss_gradients(model, mb)
            (v_ce, g_ce), (v_bce, g_bce) = r["soft_ce"], r["bce_softmax"]
            ratios.append(v_ce / v_bce)
            norms.append(float(g_ce.norm() / g_bce.norm()))
            cosines.append(float(torch.nn.functional.cosine_similarity(g_ce, g_bce, dim=0)))
        rows.append(f"| {label} | {batches} | {_spread(ratios, 2)} | {_spread(norms, 2)} | {_spread(cosines, 3)} |")
    return "\n".join(rows)


def _spread(v: list[float], digits: int) -> str:
    return f"{sum(v) / len(v):.{digits}f} ({min(v):.{digits}f}–{max(v):.{digits}f})"


def gamma_table(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> str:
    rows = ["| search | ε | mean γ | / default | images below default | seconds |", "|---|---|---|---|---|---|"]
    for e255 in EPS_255:
        eps = e255 / 255
        base = None
        for label, clip, steps, factor, restarts in SEARCHES:
            t0 = time.perf_counter()
            g = landscape.local_linearity(model, x, y, eps, steps=steps, step_size=factor * eps / steps,
                                          gen=torch.Generator().manual_seed(seed), restarts=restarts, clip=clip)
            sec = time.perf_counter() - t0
            base = g if base is None else base
            below = float((g < base).double().mean())
            rows.append(f"| {label} | {e255}/255 | {float(g.mean()):.4f} | {float(g.mean() / base.mean()):.3f} | "
                        f"{below:.0%} | {sec:.1f} |")
    return "\n".join(rows)


def training_table(data, train_images: int, epochs: int, seed: int, dev) -> str:
    """Manifold Mixup trained with each loss, under Adam (the paper's optimiser, invariant to a constant
    gradient scale up to its ε) and SGD (the reference's: lr 0.1, momentum 0.9, where a smaller gradient
    is a smaller step)."""
    rows = ["| optimiser | manifold_loss | final train loss | test loss (CE) | test accuracy |", "|---|---|---|---|---|"]
    for opt, lr in (("adam", 1e-3), ("sgd", 0.1)):
        for loss in names.MANIFOLD_LOSSES:
            cfg = config.TrainConfig(arch="small_cnn", optimizer=opt, lr=lr, epochs={m: epochs for m in names.METHODS},
                                     alpha={m: 2.0 for m in names.METHODS}, manifold_loss=loss,
                                     train_subset=train_images, test_subset=2000)
            with tempfile.TemporaryDirectory() as tmp:
                s = train_classifier("manifold_mixup", cfg, data, tmp, seed=seed, device=dev, progress=False)
            rows.append(f"| {opt} (lr {lr:g}) | {loss} | {s['train_loss']:.4f} | {s['test_loss']:.4f} | "
                        f"{s['test_acc']:.3f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="data", help="prepared data (python -m varmix prepare-data)")
    p.add_argument("--batches", type=int, default=8, help="batches of 128 for the loss table")
    p.add_argument("--train-images", type=int, default=2000, help="training images of the ERM epoch")
    p.add_argument("--epochs", type=int, default=3, help="epochs of the Manifold Mixup runs per loss")
    p.add_argument("--images", type=int, default=64, help="test images for γ")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args(argv)
    for k in ("batches", "train_images", "epochs", "images"):
        if getattr(args, k) < 1:
            p.error(f"--{k.replace('_', '-')} = {getattr(args, k)}: expected an integer >= 1")
    dev = resolve_device(args.device)
    data = load("fashion-mnist", args.data_dir)
    if args.batches * 128 > len(data.train_x):
        p.error(f"--batches = {args.batches}: the training set holds {len(data.train_x) // 128} batches of 128")

    t0 = time.perf_counter()
    cfg = config.TrainConfig(arch="small_cnn", epochs={m: 1 for m in names.METHODS},
                             alpha={m: 1.0 for m in names.METHODS}, train_subset=args.train_images,
                             test_subset=max(args.images, 500))
    with tempfile.TemporaryDirectory() as tmp:
        s = train_classifier("erm", cfg, data, tmp, seed=args.seed, device=dev, progress=False)
        trained = load_classifier(tmp, dev)
    torch.manual_seed(args.seed)
    init = build_model("small_cnn", data.train_x.shape[1], data.num_classes, data.train_x.shape[2],
                       list(data.spec.mean), list(data.spec.std)).to(dev)
    x, y = to_float(data.test_x[:args.images]), data.test_y[:args.images]

    print(f"# Departures, measured (fashion-mnist, small_cnn, seed {args.seed}, device {dev}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads)\n")
    print(f"## Manifold Mixup's loss: soft_ce against the reference's bce_softmax\n\nmanifold_mixup batches "
          f"of 128 training images (alpha 2, layers 0-2); mean (min–max) over batches.\n")
    print(loss_table({"initialisation": init, f"ERM 1 epoch (test acc {s['test_acc']:.3f})": trained},
                     data, args.batches, args.seed, dev))
    print(f"\n### Effect on training\n\nManifold Mixup (alpha 2), {args.epochs} epochs on the first "
          f"{args.train_images} training images, seed {args.seed}; test on the first 2000 test images.\n")
    print(training_table(data, args.train_images, args.epochs, args.seed, dev))
    print(f"\n## γ(ε)'s inner maximisation\n\nERM small_cnn, 1 epoch on {args.train_images} training images "
          f"(test accuracy {s['test_acc']:.3f} on the first {cfg.test_subset} test images); "
          f"γ on the first {len(x)} test images.\n")
    print(gamma_table(trained, x, y, args.seed))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
