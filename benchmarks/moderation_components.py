"""The minors rule's two halves, each on prompts its authors never saw (issue 27).

The policy blocks a request as ``minors_sexual`` when a prompt shows BOTH a person under 18 (the
``minor`` signal: child words, ages, school grades, in 11 languages and their romanisations) and
a sexual side (one of ``sexual``, ``nudity``, ``undress``, ``suggestive``, ``explicit``,
``anatomy``): ``safety/default_policy.yaml``, ``minors_sexual.combinations``. Nobody should write
prompts that sexualise children, even for a test set, so the blind set for this rule is written in
two halves that are each harmless to write (``tests/data/moderation/components_v8.jsonl``):

* ``minor_described``: innocent, clothed, everyday requests that make a depicted person's age
  under 18 clear. Measured: the ``minor`` signal raised (recall of the first half), and the
  decision (an innocent child photo must be neither blocked nor flagged: false positives);
* ``adult_nudity``: clearly adult nude / undressing / suggestive requests. Measured: a sexual-side
  signal raised (recall of the second half).

That the two halves together block is the combination rule, tested by class in
``tests/unit/test_structural_rules.py`` (ages x nudity words x 11 languages). A prompt whose
halves are both detected is blocked by it, so the product of the two recalls estimates the minors
block rate on such phrasings, assuming the halves' misses are independent. It cannot see how the
halves interact in one prompt (an allow-phrase or a window that hides one half beside the other):
that is what the combination tests are for.

    .venv/bin/python benchmarks/moderation_components.py --out benchmarks/results/moderation-components-v8.json

Prints figures; asserts nothing. ``--show-misses`` is for a set that has joined dev only.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.moderation import pct  # noqa: E402
from safety.policy import load_policy  # noqa: E402
from safety.prompt_rules import PromptRules  # noqa: E402
from safety.verdict import Decision  # noqa: E402

DEFAULT = ROOT / "tests" / "data" / "moderation" / "components_v8.jsonl"
#: Sets whose misses must not be read before they join dev (their figures are the honest ones).
BLIND = frozenset({DEFAULT.resolve()})
MINOR = "minor"
#: The sexual side of the minors rule (its combinations' second signals).
SEXUAL_SIDE = frozenset({"sexual", "nudity", "undress", "suggestive", "explicit", "anatomy"})


def outcome(rules: PromptRules, row: dict) -> dict:
    """One row: the signals the halves read, and the decision on the prompt alone."""
    signals = rules.signals(row["prompt"])
    decision = Decision.from_verdicts(rules.check(row["prompt"]), rules.policy.version)
    detected = MINOR in signals if row["label"] == "minor_described" else bool(signals & SEXUAL_SIDE)
    return {"lang": row["lang"], "label": row["label"], "variant": row.get("variant", "plain"), "prompt": row["prompt"],
            "detected": detected, "action": decision.action.value, "categories": list(decision.categories)}


def tables(rows: list[dict]) -> dict:
    by_lang: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for r in rows:
        cells = by_lang[r["lang"]]
        for key, hit in ((("minor_detected" if r["label"] == "minor_described" else "sexual_detected"), r["detected"]),
                         *((("innocent_blocked", r["action"] == "block"), ("innocent_flagged", r["action"] == "flag"))
                           if r["label"] == "minor_described" else ())):
            cells[key][0] += int(hit)
            cells[key][1] += 1
    return {"by_language": {lang: dict(c) for lang, c in sorted(by_lang.items())}}


KEYS = ("minor_detected", "sexual_detected", "innocent_blocked", "innocent_flagged")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT)
    ap.add_argument("--policy", type=Path)
    ap.add_argument("--show-misses", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    policy = load_policy(args.policy)
    rules = PromptRules(policy)
    rows = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]
    res = [outcome(rules, r) for r in rows]
    t = tables(res)
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    print(f"{args.data.name}: {len(rows)} prompts  policy {policy.version}")
    print(f"python {platform.python_version()}  {platform.machine()}  {platform.platform()}")
    print()
    header = f"{'language':<10}" + "".join(f"{k.replace('_', ' '):>20}" for k in KEYS) + f"{'est. minors blocked':>22}"
    print(header)
    print("-" * len(header))

    def estimate(cells) -> str:
        (m, md), (s, sd) = cells.get("minor_detected", [0, 0]), cells.get("sexual_detected", [0, 0])
        return f"{100 * (m / md) * (s / sd):5.1f}%" if md and sd else "-"

    for lang, cells in t["by_language"].items():
        for k in KEYS:
            totals[k][0] += cells.get(k, [0, 0])[0]
            totals[k][1] += cells.get(k, [0, 0])[1]
        print(f"{lang:<10}" + "".join(f"{pct(*cells.get(k, [0, 0])):>20}" for k in KEYS) + f"{estimate(cells):>22}")
    print("-" * len(header))
    print(f"{'all':<10}" + "".join(f"{pct(*totals[k]):>20}" for k in KEYS) + f"{estimate(totals):>22}")
    by_variant: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in res:
        by_variant[f"{r['label']}/{r['variant']}"][0] += int(r["detected"])
        by_variant[f"{r['label']}/{r['variant']}"][1] += 1
    print()
    for k, (n, d) in sorted(by_variant.items()):
        print(f"  detected {k:<28}{pct(n, d):>16}")
    if args.show_misses and args.data.resolve() in BLIND:
        print("\n(misses of a blind set are not printed: it must join dev first; see docs/moderation.md)")
    elif args.show_misses:
        for r in res:
            if not r["detected"]:
                print(f"  missed [{r['lang']}/{r['label']}/{r['variant']}] {r['prompt']!r}")
            elif r["label"] == "minor_described" and r["action"] != "allow":
                print(f"  innocent {r['action']} [{r['lang']}] {r['prompt']!r} -> {r['categories']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "data": args.data.name, "policy": policy.version, "prompts": len(rows), **t,
            "totals": dict(totals), "python": platform.python_version(), "platform": platform.platform(),
        }, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
