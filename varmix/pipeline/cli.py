"""Command line: ``python -m varmix prepare-data | check-params | check-env | verify-data | notebook |
refresh-notebooks | site | readme | train-worker``."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from varmix.core import config, errors, io
from varmix.core.io import project_root


def skip_slow_optional_imports() -> None:
    """Keep jsonschema from importing ``rfc3987_syntax``, which builds a lark grammar at import: 1.4 s of each
    notebook stage's command and of the site's build (``python -X importtime``), through nbformat, which
    papermill and the site import. jsonschema imports it, when installed (jupyterlab's jupyter-events pulls it
    in), only to check the "iri" string format, which no schema this process validates uses (nbformat's do
    not), and skips that checker on ImportError: a None in sys.modules makes the import raise one. The
    upstream report: python-jsonschema/jsonschema#1428."""
    sys.modules.setdefault("rfc3987_syntax", None)


def main(argv: list[str] | None = None) -> int:
    skip_slow_optional_imports()
    parser = argparse.ArgumentParser(prog="python -m varmix", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare-data", help="write the prepared .npy folder that data.dvc pins")
    prep.add_argument("--params", default=None, help="params.yaml (default: the project's)")
    prep.add_argument("--dataset", default=None, help="dataset name (default: params.yaml's)")
    prep.add_argument("--data-dir", default=None, help="output folder (default: params.yaml's data_dir)")
    prep.add_argument("--raw-dir", default=None, help="where the raw dataset lies (default: params.yaml's)")
    prep.add_argument("--download", action="store_true", help="download with torchvision when missing")
    chk = sub.add_parser("check-params", help="validate params.yaml and print the selected profile")
    chk.add_argument("--params", default=None)
    sub.add_parser("check-env", help="check the installed packages against requirements.lock (make install)")
    ver = sub.add_parser("verify-data", help="validate params.yaml, then check the prepared data against data.dvc "
                                             "and meta.json without writing (dvc.yaml's check stage)")
    ver.add_argument("--params", default=None)
    ver.add_argument("--profile", default=None)
    ver.add_argument("--dataset", default=None)
    ver.add_argument("--stamp", default=None, help="write the verified data hash here (the check stage's output)")
    ver.add_argument("--code-records", action="store_true",
                     help="also bring each stage's code-records/<stage>.md5 up to date (the check stage: varmix.pipeline.deps)")
    nb = sub.add_parser("notebook", help="execute one notebook with papermill into results/ (a dvc stage)")
    nb.add_argument("name", help="notebook name, e.g. 01_vae")
    nb.add_argument("--profile", default=None)
    nb.add_argument("--dataset", default=None)
    nb.add_argument("--arm", "--method", dest="arm", default=None,
                    help="02_train only: the arm to train (params.yaml's arms; --method is the old name)")
    nb.add_argument("--seed", type=int, default=None, help="02_train only: the seed")
    nb.add_argument("--vae", default=None, help="01_vae only: plain (default) | adversarial (adv-VarMixup's VAE)")
    nb.add_argument("--vae-seed", type=int, default=None,
                    help="01_vae's plain VAE only: its seed, one of params.yaml's vae_seeds (default: the first)")
    nb.add_argument("--regime", action="store_true",
                    help="02_train only: train the run with the profile's regime budget (regime_arms x regime_seeds)")
    ref = sub.add_parser("refresh-notebooks", help="re-execute notebooks/ in place (smoke): nbval's reference outputs")
    ref.add_argument("names", nargs="*", help="notebook names (default: all, in order)")
    site = sub.add_parser("site", help="build the static HTML results site from results/<dataset>/<profile>/ "
                                       "(dvc.yaml's site stage)")
    site.add_argument("--profile", default=None)
    site.add_argument("--dataset", default=None)
    site.add_argument("--out", default=None, help="output folder (default: results/<dataset>/<profile>/site)")
    rdm = sub.add_parser("readme", help="rewrite README.md's generated results block from the study's "
                                        "metrics/report.json")
    rdm.add_argument("--profile", default=None, help="the study's profile (default: params.yaml's)")
    rdm.add_argument("--dataset", default=None, help="the study's dataset (default: params.yaml's)")
    wrk = sub.add_parser("train-worker", help="one torchrun worker of a distributed training run (started by "
                                              "varmix.learn.distributed.launch; docs/DISTRIBUTED.md)")
    wrk.add_argument("spec", help="the run's spec file, written by the launcher")
    dep = sub.add_parser("deps", help="write each dvc.yaml stage's code dep, code-records/<stage>.md5 (its import "
                                      "closure with md5s), and drop dvc.lock's entries of stages dvc.yaml no longer "
                                      "has (varmix.pipeline.deps)")
    dep.add_argument("--check", action="store_true", help="only say whether dvc.yaml's deps and code-records/ are the "
                                                          "generated ones and dvc.lock holds no stage dvc.yaml lacks")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (*errors.REPORTED, errors.Interrupted) as exc:  # the one place user errors become messages
        lines, code = errors.describe(exc)
        print("\n".join(lines), file=sys.stderr)
        return code
    except KeyboardInterrupt:  # Ctrl-C outside a notebook run (prepare-data): nothing half-written stays
        print(f"interrupted: {args.command} stopped", file=sys.stderr)
        return 128 + signal.SIGINT


def _params_root(args: argparse.Namespace) -> Path:
    """The folder params.yaml's relative paths (data_dir, raw_dir) start from: its own folder (the project
    root, where dvc runs the stages), whatever the cwd. Folders given on the command line stay relative to
    the cwd, as usual."""
    return Path(args.params).resolve().parent if args.params else project_root()


def _deps(deps, check: bool) -> int:
    root = project_root()
    path, lock = root / "dvc.yaml", root / "dvc.lock"
    text = path.read_text()
    new = deps.render(root, text)
    stale = deps.stale_lock_stages(root)
    if check:
        if new != text:
            changed = [s for s, d in deps.listed_code_deps(new).items() if deps.listed_code_deps(text).get(s) != d]
            raise errors.UserError(f"dvc.yaml: the code deps of {', '.join(changed)} are not their record "
                                   f"{deps.CODE_DIR}/<stage>.md5; run python -m varmix deps")
        records = deps.stale_records(root, text)
        if records:
            raise errors.UserError(f"{', '.join(deps.record_path(s) for s in records)}: not the md5s of the modules "
                                   "the stage runs now; run python -m varmix deps (or dvc repro, whose check stage "
                                   "brings them up to date)")
        if stale:
            raise errors.UserError(f"dvc.lock holds {len(stale)} stages dvc.yaml does not have ({', '.join(stale[:3])}"
                                   f"{', ...' if len(stale) > 3 else ''}); run python -m varmix deps")
        print("dvc.yaml: every stage depends on its code record; every code record up to date")
        return 0
    if new != text:
        with io.atomic_path(path) as tmp:
            tmp.write_text(new)
    written = deps.write_records(root, new)
    if stale:
        with io.atomic_path(lock) as tmp:
            tmp.write_text(deps.prune_lock(lock.read_text(), stale))
    print("dvc.yaml: " + ("code deps rewritten as code-records/<stage>.md5" if new != text
                          else "every stage depends on its code record")
          + (f"; {len(written)} code records brought up to date" if written else "; every code record up to date")
          + (f"; dvc.lock: {len(stale)} entries of stages dvc.yaml does not have removed" if stale else ""))
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "train-worker":
        from varmix.learn import train

        return train.worker_main(args.spec)
    if args.command == "check-env":
        from varmix.pipeline import envlock  # no torch: only package metadata

        print(envlock.check(project_root()))
        return 0
    if args.command in ("notebook", "refresh-notebooks"):
        from varmix.pipeline import runner  # not varmix.learn.data: running a notebook should not import torch here

        if args.command == "notebook":
            from varmix.pipeline import preflight

            run = preflight.guard(project_root(), lambda: runner.prepare(args.name, args.profile, args.dataset,
                                                                          args.arm, args.seed, args.vae,
                                                                          args.vae_seed, args.regime),
                                  data_of=lambda run: run.params)
            print(f"wrote {runner.execute(run)}")
        else:
            runner.refresh_notebooks(tuple(args.names) or runner.NOTEBOOKS)
        return 0

    if args.command == "deps":
        from varmix.pipeline import deps

        return _deps(deps, args.check)
    if args.command == "site":
        from varmix.pipeline import session
        from varmix.study import site  # no torch: nbconvert and jinja2 only

        from varmix.pipeline import preflight

        # params.yaml validated, VARMIX_WORKDIR followed; under DVC, the checks before the stage's work
        _, layout = preflight.guard(project_root(), lambda: session.resolve(args.profile, args.dataset))
        started = time.perf_counter()
        out = site.build_site(layout.results, args.out)
        if args.out is None:  # the stage's own wall, as a notebook's save_metrics records it: the build, imports
            # and checks excluded (the study profile counts those with DVC's as the stage's overhead)
            io.write_json(layout.timings("site"), {"wall_seconds": round(time.perf_counter() - started, 1)})
        print(f"wrote {out}/index.html")
        return 0

    if args.command == "readme":
        from varmix.pipeline import session
        from varmix.study import readme  # no torch, no pandas: the standard library and varmix.core

        params, _ = session.resolve(args.profile, args.dataset)  # params.yaml validated
        root = project_root()
        # the committed study's report (the project's results/, whatever VARMIX_WORKDIR says): the README is
        # the project's, and describes what is committed
        report = session.Layout(root, params.dataset, params.profile).results / "metrics" / "report.json"
        changed = readme.rewrite(root / "README.md", report)
        print(f"{'rewrote' if changed else 'unchanged:'} README.md's results block from "
              f"{report.relative_to(root)}")
        return 0

    if args.command == "verify-data":
        from varmix.pipeline import deps, verify  # no torch: the first stage of every dvc repro

        params = config.load_params(args.params, {"profile": args.profile, "dataset": args.dataset})
        root = _params_root(args)
        md5 = verify.verify_data(root, params.data_dir, params.datasets)  # the classifier's and the VAE's
        if args.stamp:
            verify.write_stamp(args.stamp, params.dataset, md5)
        print(f"params OK (profile={params.profile}); data OK: {params.data_dir}/ = {md5}, as data.dvc pins "
              f"({', '.join(params.datasets)} checked)")
        if args.code_records:  # before any other stage: DVC sees an edit to the code a stage runs
            code = project_root()
            changed = deps.write_records(code, (code / "dvc.yaml").read_text())
            print(f"code records: {', '.join(deps.record_path(s) for s in changed)} brought up to date" if changed
                  else "code records: every stage's code-records/<stage>.md5 is up to date")
        return 0

    params = config.load_params(args.params)
    if args.command == "check-params":
        print(f"params OK: profile={params.profile} dataset={params.dataset} arms={','.join(params.arms)}"
              f" seeds={','.join(map(str, params.seeds))} vae_seeds={','.join(map(str, params.vae_seeds))}"
              + (f" (rival_arms {','.join(params.rival_arms)}: seeds={','.join(map(str, params.rival_seeds))})"
                 if params.rival_arms else ""))
        return 0

    from varmix.learn import data  # imports torch: only here

    root = _params_root(args)
    name = args.dataset or params.dataset
    data_dir = args.data_dir or root / params.data_dir
    raw_dir = args.raw_dir or (root / params.raw_dir if params.raw_dir else None)
    out = data.prepare(name, data_dir, raw_dir, download=args.download)
    print(f"prepared {name} in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
