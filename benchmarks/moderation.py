"""Moderation rules stage against the labelled prompt set: catch rates, false positives, latency.

    .venv/bin/python benchmarks/moderation.py [--policy FILE] [--data FILE] [--show-misses]

Prints figures; asserts nothing (see HOUSE_STYLE: benchmarks print, tests assert).
A violating prompt counts as caught when it is blocked in its own category (``flag`` for
categories whose policy action is ``flag``). A benign prompt is a false positive when blocked;
benign flags are reported separately because a flag does not refuse the request.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safety.policy import load_policy  # noqa: E402
from safety.prompt_rules import PromptRules  # noqa: E402
from safety.verdict import Action, Decision  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "moderation" / "prompts.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--show-misses", action="store_true")
    args = ap.parse_args()

    t0 = time.perf_counter()
    policy = load_policy(args.policy)
    rules = PromptRules(policy)
    build_ms = (time.perf_counter() - t0) * 1e3
    rows = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]

    caught: dict[tuple[str, str], list[bool]] = defaultdict(list)
    benign_block: list[str] = []
    benign_flag: list[str] = []
    misses: list[str] = []
    latencies: list[float] = []
    for _ in range(3):  # warm-up pass so the first-call regex/cache cost is not in the figures
        for row in rows:
            rules.check(row["prompt"])
    for row in rows:
        ctx = bool(row.get("real_person_context"))
        t = time.perf_counter_ns()
        verdicts = rules.check(row["prompt"], row.get("negative_prompt"), real_person_context=ctx)
        latencies.append((time.perf_counter_ns() - t) / 1e3)
        decision = Decision.from_verdicts(verdicts, policy.version)
        label = row["label"]
        if label == "benign":
            if decision.action is Action.BLOCK:
                benign_block.append(f"{row['prompt']!r} -> {list(decision.categories)}")
            elif decision.action is Action.FLAG:
                benign_flag.append(f"{row['prompt']!r} -> {list(decision.categories)}")
            continue
        want = policy.category(label).action
        hit = any(v.category == label and v.action is want for v in verdicts)
        caught[(label, row["variant"])].append(hit)
        if not hit:
            misses.append(f"[{label}/{row['variant']}] {row['prompt']!r} -> {decision.action.value} {list(decision.categories)}")

    n_benign = sum(1 for r in rows if r["label"] == "benign")
    print(f"policy {policy.version}  prompts {len(rows)} (benign {n_benign})  build {build_ms:.1f} ms")
    print(f"python {platform.python_version()}  {platform.machine()}  {platform.processor() or platform.platform()}")
    print()
    print(f"{'category':<24}{'action':<8}{'plain':>14}{'evasion':>14}")
    for cat in sorted({c for c, _ in caught}):
        cells = []
        for variant in ("plain", "evasion"):
            hits = caught.get((cat, variant), [])
            cells.append(f"{sum(hits)}/{len(hits)} {100 * sum(hits) / len(hits):5.1f}%" if hits else "-")
        print(f"{cat:<24}{policy.category(cat).action.value:<8}{cells[0]:>14}{cells[1]:>14}")
    print()
    print(f"benign blocked (false positives): {len(benign_block)}/{n_benign} = {100 * len(benign_block) / n_benign:.1f}%")
    print(f"benign flagged (accepted, reviewed): {len(benign_flag)}/{n_benign} = {100 * len(benign_flag) / n_benign:.1f}%")
    qs = statistics.quantiles(latencies, n=100)
    print(f"rules stage latency per prompt: p50 {qs[49]:.0f} us  p95 {qs[94]:.0f} us  max {max(latencies):.0f} us")
    if args.show_misses:
        for title, items in (("missed", misses), ("benign blocked", benign_block), ("benign flagged", benign_flag)):
            print(f"\n{title}:")
            for item in items:
                print("  " + item)


if __name__ == "__main__":
    main()
