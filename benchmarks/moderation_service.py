"""Overhead of the ``moderation_service`` stage per prompt, with the service on loopback.

    .venv/bin/python benchmarks/moderation_service.py [--prompts N] [--out benchmarks/results/moderation-service-cpu.json]

The classifier service is tests/moderation_service_fake.py in its own process (so it does not
share this process's GIL), answering at once: the figures are what the stage itself costs
(normalising, the cache, the concurrency cap and breaker, one HTTP/1.1 request on a kept-alive
loopback connection, JSON both ways, parsing and mapping) plus a Python ``http.server``'s own
handling. A real service adds its inference time on top (omni-moderation over the internet:
round trip plus model; Llama Guard on a GPU behind vLLM: its generation of ~3 tokens).

Side by side, one prompt at a time through ``ModerationChain.check_prompt`` (no audit):

  keyword policy alone     the default policy's prompt rules only (the baseline)
  + service, cold          rules + service, each prompt asked for the first time (cache miss)
  + service, cached        the same prompts again (cache hit: no request)
  + llama_guard, cold      rules + service in the chat-completion format, cache miss

Benign prompts from tests/data/moderation/ (they pass the rules, so every one reaches the
service). Prints a table; saves JSON with ``--out``. Asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs.settings import Settings  # noqa: E402
from safety.chain import ModerationChain  # noqa: E402
from safety.policy import DEFAULT_POLICY, load_policy  # noqa: E402

DATA = ROOT / "tests" / "data" / "moderation"
SERVICE = """
moderation_service:
  url: http://127.0.0.1:{port}/v1/{path}
  format: {fmt}
  model: {model}
  timeout_s: 5
  max_concurrency: 8
  cache: {{size: 100000, ttl_s: 3600}}
  categories:
{mapping}
"""
OPENAI_MAP = """    sexual/minors: {category: minors_sexual, threshold: 0.2}
    sexual: {category: sexual_explicit, threshold: 0.8}
    violence/graphic: {category: graphic_violence, threshold: 0.6}
    self-harm/intent: {category: self_harm, threshold: 0.5}
    hate: {category: hate_symbols, threshold: 0.7}"""
LLAMA_MAP = """    S4: minors_sexual
    S12: sexual_explicit
    S1: graphic_violence
    S11: self_harm
    S10: hate_symbols"""


def benign_prompts(n: int) -> list[str]:
    out: list[str] = []
    for f in sorted(DATA.glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if row.get("label") == "benign" and row["prompt"] not in out:
                    out.append(row["prompt"])
    return out[:n]


def start_service() -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.moderation_service_fake"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    if not line or line[0] != "ready":
        proc.kill()
        raise SystemExit("the fake service did not start")
    return proc, int(line[1])


def chain_with(service: str | None, tmp: Path, name: str) -> ModerationChain:
    path = tmp / f"{name}.yaml"
    path.write_text(DEFAULT_POLICY.read_text(encoding="utf-8") + (service or ""), encoding="utf-8")
    settings = Settings(home=tmp / "home", policy_file=path, nsfw_classifier="off",
                        moderation_service_allow_hosts=["127.0.0.1"], moderation_service_key="bench-key")
    return ModerationChain.from_settings(settings, detect_faces=False, audit=False)


def measure(chain: ModerationChain, prompts: list[str]) -> dict:
    times, actions = [], {}
    for p in prompts:
        t0 = time.perf_counter()
        d = chain.check_prompt(p)
        times.append(time.perf_counter() - t0)
        actions[d.action.value] = actions.get(d.action.value, 0) + 1
    q = statistics.quantiles(times, n=100)
    return {"n": len(times), "p50_us": round(q[49] * 1e6, 1), "p95_us": round(q[94] * 1e6, 1),
            "mean_us": round(statistics.fmean(times) * 1e6, 1), "actions": actions}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3, help="each row measured this many times; the median round is kept")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    prompts = benign_prompts(args.prompts)
    load_before = os.getloadavg()[0]
    proc, port = start_service()
    rows: dict[str, list[dict]] = {}
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            openai = SERVICE.format(port=port, path="moderations", fmt="openai", model="omni-moderation-latest",
                                    mapping=OPENAI_MAP)
            llama = SERVICE.format(port=port, path="chat/completions", fmt="llama_guard",
                                   model="meta-llama/Llama-Guard-4-12B", mapping=LLAMA_MAP)
            base = chain_with(None, tmp, "base")
            base.check_prompt("warm up")
            for r in range(args.rounds):
                rows.setdefault("keyword policy alone", []).append(measure(base, prompts))
                with_service = chain_with(openai, tmp, f"openai{r}")
                with_service.check_prompt("warm up the connection")
                rows.setdefault("+ service (openai), cold", []).append(measure(with_service, prompts))
                rows.setdefault("+ service (openai), cached", []).append(measure(with_service, prompts))
                guard = chain_with(llama, tmp, f"llama{r}")
                guard.check_prompt("warm up the connection")
                rows.setdefault("+ service (llama_guard), cold", []).append(measure(guard, prompts))
    finally:
        proc.terminate()
        proc.wait(10)
    table = {name: sorted(runs, key=lambda x: x["p50_us"])[len(runs) // 2] for name, runs in rows.items()}
    base_p50 = table["keyword policy alone"]["p50_us"]
    load = (round(load_before, 2), round(os.getloadavg()[0], 2))
    print(f"{len(prompts)} benign prompts, one at a time; median of {args.rounds} rounds; "
          f"service on loopback in its own process, answering at once; 1-min load {load[0]} -> {load[1]} "
          f"on {os.cpu_count()} cores\n")
    print(f"{'':34} {'p50':>10} {'p95':>10} {'mean':>10} {'p50 over rules':>15}")
    for name, m in table.items():
        extra = "" if name.startswith("keyword") else f"{(m['p50_us'] - base_p50) / 1000:+.2f} ms"
        print(f"{name:34} {m['p50_us'] / 1000:8.3f} ms {m['p95_us'] / 1000:7.3f} ms {m['mean_us'] / 1000:7.3f} ms "
              f"{extra:>15}")
    if args.out:
        import httpx

        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
        result = {
            "benchmark": "moderation_service", "commit": commit, "prompts": len(prompts), "rounds": args.rounds,
            "policy": load_policy().version, "rows": table, "all_rounds": rows, "load_1min_before_after": load,
            "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform(), "httpx": httpx.__version__},
            "service": "tests/moderation_service_fake.py (Python http.server, ThreadingHTTPServer) in its own process",
        }
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nsaved {args.out}")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
