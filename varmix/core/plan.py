"""analysis_plan.yaml: the pre-registered analysis plan the report decides by, loaded and checked once.

The plan fixes, before the runs it judges: the family of comparisons (arm -> rivals), α, the power the
minimum detectable effect is computed for, the smallest effect of interest (SESOI) per claim, the sizes
(seeds, test images per claim) and the pilot they came from. Its git commit is the record:
:func:`provenance` says whether that commit precedes the results the report decides.
"""

from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from varmix.core.errors import ConfigError

PLAN_FILE = "analysis_plan.yaml"
_KEYS = ("version", "changes", "alpha", "power", "family", "rule", "sesoi", "sizes", "pilot")


@dataclass(frozen=True)
class Plan:
    version: int
    alpha: float
    power: float
    family: dict[str, tuple[str, ...]]
    rule: str
    sesoi: dict[str, float]
    seeds: int
    images: dict[str, int]
    pilot_commit: str
    changes: tuple[dict, ...]


def _bad(key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{PLAN_FILE}: {key} = {value!r} is invalid: expected {expected}")


def _fraction(d: Mapping, key: str) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
        raise _bad(key, v, "a number between 0 and 1")
    return float(v)


def _positive_int(v: Any, key: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise _bad(key, v, "an integer >= 1")
    return v


def parse_plan(d: Any) -> Plan:
    """The plan from its YAML mapping, every key checked (a ConfigError names the key and the value)."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{PLAN_FILE}: expected a mapping with keys {', '.join(_KEYS)}")
    unknown, missing = sorted(set(d) - set(_KEYS)), [k for k in _KEYS if k not in d]
    if unknown or missing:
        raise ConfigError(f"{PLAN_FILE}: " + (f"unknown key {unknown[0]}" if unknown else f"missing key {missing[0]}")
                          + f"; the keys are {', '.join(_KEYS)}")
    family = d["family"]
    if not isinstance(family, Mapping) or not family or not all(
            isinstance(r, list) and r and all(isinstance(x, str) for x in r) for r in family.values()):
        raise _bad("family", family, "a mapping of arm -> non-empty list of rival arms")
    sesoi = d["sesoi"]
    if not isinstance(sesoi, Mapping) or not sesoi:
        raise _bad("sesoi", sesoi, "a mapping of metric -> smallest effect of interest")
    for metric, v in sesoi.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
            raise _bad(f"sesoi.{metric}", v, "a finite number > 0")
    sizes = d["sizes"]
    if not isinstance(sizes, Mapping) or set(sizes) != {"seeds", "images"} or not isinstance(sizes["images"], Mapping):
        raise _bad("sizes", sizes, "a mapping with seeds (an integer) and images (metric -> an integer)")
    images = {m: _positive_int(n, f"sizes.images.{m}") for m, n in sizes["images"].items()}
    if set(images) != set(sesoi):
        raise _bad("sizes.images", sorted(images), f"one size per claim of sesoi ({', '.join(sorted(sesoi))})")
    pilot = d["pilot"]
    if not isinstance(pilot, Mapping) or not isinstance(pilot.get("commit"), str) or len(pilot["commit"]) != 40:
        raise _bad("pilot", pilot, "a mapping with commit: the 40-hex-digit git commit of the pilot's results")
    if not isinstance(d["rule"], str) or not d["rule"]:
        raise _bad("rule", d["rule"], "the rule's name")
    changes = d["changes"]
    if not isinstance(changes, list) or not all(isinstance(c, Mapping) and c.get("reason") for c in changes):
        raise _bad("changes", changes, "a list of {version, reason}, one per version")
    version = _positive_int(d["version"], "version")
    if [c.get("version") for c in changes] != list(range(1, version + 1)):
        raise _bad("changes", [c.get("version") for c in changes], f"one entry per version 1..{version}, each "
                                                                   f"with its reason")
    return Plan(version=version, alpha=_fraction(d, "alpha"), power=_fraction(d, "power"),
                family={a: tuple(r) for a, r in family.items()}, rule=d["rule"],
                sesoi={m: float(v) for m, v in sesoi.items()}, seeds=_positive_int(sizes["seeds"], "sizes.seeds"),
                images=images, pilot_commit=pilot["commit"], changes=tuple(dict(c) for c in changes))


def load_plan(root: str | Path) -> Plan:
    """``root``/analysis_plan.yaml, parsed and checked."""
    path = Path(root) / PLAN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the report decides by the committed analysis plan")
    try:
        return parse_plan(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None


def check_family(plan: Plan, comparisons: Mapping[str, Any]) -> None:
    """The family the study runs (params.yaml's ``comparisons``) must be the plan's: a change of family is a
    new plan, written down before new data."""
    given = {a: tuple(r) for a, r in comparisons.items()}
    if given != plan.family:
        raise ConfigError(f"params.yaml's comparisons {given} differ from {PLAN_FILE}'s family {plan.family}: "
                          f"change both together, as a new plan version with its reason")


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(root: str | Path, data: list[str | Path]) -> dict[str, Any]:
    """Whether the plan's commit precedes the results it decides. ``data``: the per-image files the report
    reads. Results not in git yet (a new run) are newer than every commit, so a committed, unmodified plan
    precedes them; committed results precede the plan when their last commit is older than the plan's."""
    root = Path(root)
    plan_log = _git(root, "log", "-1", "--format=%H %ct", "--", PLAN_FILE)
    dirty = _git(root, "status", "--porcelain", "--", PLAN_FILE)
    if not plan_log or dirty:
        return {"plan_commit": None, "precedes": False,
                "statement": f"{PLAN_FILE} is not committed as it is now: these results are not decided by a "
                             f"plan fixed before them"}
    plan_commit, plan_time = plan_log.split()
    times = []
    for path in data:
        rel = Path(path).resolve()
        try:
            rel = rel.relative_to(root.resolve())
        except ValueError:  # outside the repository (a scratch folder): a new run
            continue
        changed = _git(root, "status", "--porcelain", "--", str(rel))
        log = _git(root, "log", "-1", "--format=%ct", "--", str(rel))
        if log and not changed:
            times.append(int(log))
    if times and max(times) < int(plan_time):
        return {"plan_commit": plan_commit, "precedes": False,
                "statement": f"the plan (commit {plan_commit[:10]}) was committed after these results: they are "
                             f"its pilot, not the study it decides"}
    return {"plan_commit": plan_commit, "precedes": True,
            "statement": f"the plan (commit {plan_commit[:10]}) was committed before these results"}
