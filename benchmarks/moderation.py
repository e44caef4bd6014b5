"""Moderation rules stage against the labelled prompt sets: recall, false blocks, latency.

    .venv/bin/python benchmarks/moderation.py --split test          # the figures in docs/moderation.md
    .venv/bin/python benchmarks/moderation.py --split dev --show-misses   # for tuning: dev ONLY
    .venv/bin/python benchmarks/moderation.py --data FILE [--policy FILE] [--out JSON]

Splits (tests/data/moderation/):
  dev   multilingual_dev.jsonl + multilingual_test_v1.jsonl + prompts.jsonl + holdout.jsonl
        (everything the rules were tuned on; test_v1..v4, v6 and v7 joined dev after their reported runs)
  test  multilingual_test.jsonl (written after the rules were frozen; never tuned on)

Prints figures; asserts nothing (see HOUSE_STYLE: benchmarks print, tests assert).
A violating prompt is *caught* when the decision is block or flag; *exact* when it got its own
category with that category's action. A minors prompt counts only when blocked as
``minors_sexual``. A benign prompt is a false block when blocked; benign flags are reported
separately because a flag does not refuse the request.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from safety.policy import load_policy  # noqa: E402
from safety.prompt_rules import PromptRules  # noqa: E402
from safety.verdict import Action, Decision  # noqa: E402

DATA_DIR = ROOT / "tests" / "data" / "moderation"
SPLITS = {
    "dev": ("multilingual_dev.jsonl", "multilingual_test_v1.jsonl", "multilingual_test_v2.jsonl",
            "multilingual_test_v3.jsonl", "multilingual_test_v4.jsonl", "multilingual_test_v6.jsonl",
            "multilingual_test_v7.jsonl", "prompts.jsonl", "holdout.jsonl"),
    "test": ("multilingual_test.jsonl",),
}
MINORS = "minors_sexual"


def load(files: list[Path]) -> list[dict]:
    rows = []
    for f in files:
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                row.setdefault("lang", "en")
                rows.append(row)
    return rows


def pct(n: int, d: int) -> str:
    return f"{n}/{d} {100 * n / d:5.1f}%" if d else "-"


def evaluate(rules: PromptRules, rows: list[dict]) -> dict:
    """Run every row; return per-row outcomes and latencies."""
    policy = rules.policy
    out = []
    latencies: list[float] = []
    for row in rows:
        ctx = bool(row.get("real_person_context"))
        t = time.perf_counter_ns()
        verdicts = rules.check(row["prompt"], row.get("negative_prompt"), real_person_context=ctx)
        latencies.append((time.perf_counter_ns() - t) / 1e3)
        decision = Decision.from_verdicts(verdicts, policy.version)
        label = row["label"]
        exact = label != "benign" and any(
            v.category == label and v.action is policy.category(label).action for v in verdicts)
        caught = decision.action is not Action.ALLOW
        if label == MINORS:
            caught = exact
        out.append({"lang": row["lang"], "label": label, "variant": row.get("variant", "plain"),
                    "action": decision.action.value, "categories": list(decision.categories),
                    "caught": caught, "exact": exact, "prompt": row["prompt"]})
    return {"rows": out, "latencies_us": latencies}


def tables(results: list[dict]) -> dict:
    by_lang: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    by_cat: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in results:
        lang = by_lang[r["lang"]]
        if r["label"] == "benign":
            cell = lang["benign_blocked"]
            cell[0] += r["action"] == "block"
            cell[1] += 1
            flag = lang["benign_flagged"]
            flag[0] += r["action"] == "flag"
            flag[1] += 1
            continue
        key = "minors_blocked" if r["label"] == MINORS else "other_caught"
        lang[key][0] += r["caught"]
        lang[key][1] += 1
        lang["exact"][0] += r["exact"]
        lang["exact"][1] += 1
        by_cat[r["label"]][0] += r["caught"]
        by_cat[r["label"]][1] += r["exact"]
        by_cat[r["label"]][2] += 1
    return {"by_language": {k: dict(v) for k, v in sorted(by_lang.items())}, "by_category": dict(sorted(by_cat.items()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", type=Path, default=None)
    ap.add_argument("--split", choices=sorted(SPLITS), default=None)
    ap.add_argument("--data", type=Path, action="append", default=None, help="JSONL file(s) instead of a split")
    ap.add_argument("--show-misses", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = ap.parse_args()
    if args.data:
        files, name = args.data, ",".join(f.name for f in args.data)
    else:
        split = args.split or "test"
        files, name = [DATA_DIR / f for f in SPLITS[split]], split

    t0 = time.perf_counter()
    policy = load_policy(args.policy)
    rules = PromptRules(policy)
    build_ms = (time.perf_counter() - t0) * 1e3
    rows = load(files)
    for _ in range(2):  # warm-up so first-call regex/cache costs are not in the figures
        for row in rows:
            rules.check(row["prompt"])
    res = evaluate(rules, rows)
    t = tables(res["rows"])

    n_benign = sum(r["label"] == "benign" for r in rows)
    print(f"split {name}: {len(rows)} prompts ({n_benign} benign)  policy {policy.version}  build {build_ms:.0f} ms")
    print(f"python {platform.python_version()}  {platform.machine()}  {platform.platform()}")
    print()
    header = f"{'language':<10}{'minors blocked':>18}{'other caught':>18}{'exact category':>18}{'benign blocked':>18}{'benign flagged':>18}"
    print(header)
    print("-" * len(header))
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for lang, cells in t["by_language"].items():
        line = f"{lang:<10}"
        for key in ("minors_blocked", "other_caught", "exact", "benign_blocked", "benign_flagged"):
            n, d = cells.get(key, [0, 0])
            totals[key][0] += n
            totals[key][1] += d
            line += f"{pct(n, d):>18}"
        print(line)
    print("-" * len(header))
    print(f"{'all':<10}" + "".join(f"{pct(*totals[k]):>18}" for k in
                                    ("minors_blocked", "other_caught", "exact", "benign_blocked", "benign_flagged")))
    print()
    print(f"{'category':<22}{'action':<8}{'caught':>16}{'exact':>16}")
    for cat, (caught, exact, n) in t["by_category"].items():
        print(f"{cat:<22}{policy.category(cat).action.value:<8}{pct(caught, n):>16}{pct(exact, n):>16}")
    qs = statistics.quantiles(res["latencies_us"], n=100)
    print()
    print(f"rules stage latency per prompt: p50 {qs[49]:.0f} us  p95 {qs[94]:.0f} us  max {max(res['latencies_us']):.0f} us")
    if args.show_misses:
        if name == "test":
            print("\n(misses of the test split are not printed: tune on dev only)")
        else:
            for r in res["rows"]:
                if r["label"] != "benign" and not r["caught"]:
                    print(f"  missed [{r['lang']}/{r['label']}/{r['variant']}] {r['prompt']!r} -> {r['action']} {r['categories']}")
                elif r["label"] == "benign" and r["action"] != "allow":
                    print(f"  benign {r['action']} [{r['lang']}] {r['prompt']!r} -> {r['categories']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "split": name, "policy": policy.version, "prompts": len(rows), **t,
            "latency_us": {"p50": qs[49], "p95": qs[94], "max": max(res["latencies_us"])},
            "python": platform.python_version(), "platform": platform.platform(),
        }, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
