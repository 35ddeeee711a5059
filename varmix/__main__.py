"""Command line: ``python -m varmix prepare-data`` and ``python -m varmix check-params``."""

from __future__ import annotations

import argparse
import sys

from varmix import config, data


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)

    try:
        params = config.load_params(args.params)
        if args.command == "check-params":
            print(f"params OK: profile={params.profile} dataset={params.dataset} methods={','.join(params.methods)}"
                  f" seeds={','.join(map(str, params.seeds))}")
            return 0
        name = args.dataset or params.dataset
        out = data.prepare(name, args.data_dir or params.data_dir, args.raw_dir or params.raw_dir,
                           download=args.download)
        print(f"prepared {name} in {out}")
        return 0
    except (config.ConfigError, data.DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
