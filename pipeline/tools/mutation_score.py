"""`make mutation`'s summary: mutmut's per-mutant results → a score per module and the survivors.

A mutant is *killed* when a test fails (or the run times out) with it applied; the score of a module is
killed / (killed + survived + no tests). Survivors are listed by name so that each can be killed by a
new test or explained (``mutmut show <name>`` prints the change).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

__all__ = ["parse_results", "module_scores", "main"]

_LINE = re.compile(r"^\s*(?P<name>[\w.]+__mutmut_\d+): (?P<status>.+?)\s*$")
KILLED = {"killed", "timeout", "segfault"}
COUNTED = KILLED | {"survived", "no tests", "suspicious"}


def parse_results(text: str) -> dict[str, str]:
    """``mutmut results --all true`` output → {mutant name: status}.

    >>> parse_results("    pipeline.a.x_f__mutmut_1: killed\\n    pipeline.a.x_f__mutmut_2: survived\\n")
    {'pipeline.a.x_f__mutmut_1': 'killed', 'pipeline.a.x_f__mutmut_2': 'survived'}
    """
    return {m["name"]: m["status"] for m in map(_LINE.match, text.splitlines()) if m}


def _module(name: str) -> str:
    """The module of a mutant: the part before its trampoline (``x_function`` or ``xǁClassǁmethod``).

    >>> _module("pipeline.a.x_f__mutmut_1"), _module("pipeline.a.xǁNestedǁadd__mutmut_2")
    ('pipeline.a', 'pipeline.a')
    """
    return re.split(r"\.x(?:_|ǁ)", name, maxsplit=1)[0]


def module_scores(results: dict[str, str], patterns: list[str] = ()) -> dict[str, dict]:
    """Per module: counts by status, the score, and the surviving mutants (only names matching a pattern).

    >>> module_scores({"m.x_f__mutmut_1": "killed", "m.x_f__mutmut_2": "survived", "m.x_g__mutmut_1": "killed"})
    {'m': {'mutants': 3, 'killed': 2, 'survived': ['m.x_f__mutmut_2'], 'no_tests': [], 'score': 0.667}}
    """
    by_module: dict[str, Counter] = defaultdict(Counter)
    survivors: dict[str, dict[str, list]] = defaultdict(lambda: {"survived": [], "no tests": []})
    for name, status in sorted(results.items()):
        if patterns and not any(fnmatch.fnmatch(name, p) for p in patterns):
            continue
        module = _module(name)
        by_module[module][status] += 1
        if status in survivors[module]:
            survivors[module][status].append(name)
    scores = {}
    for module, counts in sorted(by_module.items()):
        counted = sum(n for s, n in counts.items() if s in COUNTED)
        killed = sum(n for s, n in counts.items() if s in KILLED)
        scores[module] = {"mutants": counted, "killed": killed, "survived": survivors[module]["survived"],
                          "no_tests": survivors[module]["no tests"],
                          "score": round(killed / counted, 3) if counted else None}
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/mutation.json"))
    parser.add_argument("--update", action="store_true",
                        help="keep the other modules of an existing --out file (a run of some modules only)")
    parser.add_argument("patterns", nargs="*", help="mutant name patterns (those `make mutation` ran)")
    args = parser.parse_args(argv)
    text = subprocess.run([str(Path(sys.executable).with_name("mutmut")), "results", "--all", "true"],
                          capture_output=True, text=True, check=True).stdout
    scores = module_scores(parse_results(text), args.patterns)
    kept = json.loads(args.out.read_text()) if args.update and args.out.is_file() else {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(sorted({**kept, **scores}.items())), indent=2) + "\n")
    print(f"{'module':<32}{'mutants':>8}{'killed':>8}{'survived':>10}{'no tests':>10}{'score':>8}")
    for module, s in scores.items():
        print(f"{module:<32}{s['mutants']:>8}{s['killed']:>8}{len(s['survived']):>10}{len(s['no_tests']):>10}"
              f"{s['score'] if s['score'] is not None else '':>8}")
    for module, s in scores.items():
        for name in s["survived"] + s["no_tests"]:
            print(f"not killed: {name}  (mutmut show {name})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
