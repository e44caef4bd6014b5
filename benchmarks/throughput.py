"""GPU throughput: the system end to end versus the bare diffusers pipeline, on one device.

(a) the bare pipeline called once per image
(b) the bare pipeline at its best batch size
(c) this system end to end: Redis, a worker process, moderation, C2PA signing and upload to an
    S3-compatible endpoint (moto on loopback), with --jobs jobs queued at once

Prints images/s for each, the ratios c/b and c/a, and the GPU-idle fraction of (c) (wall time not
spent inside pipeline calls). Models: ``--arch tiny`` (the CPU default), ``--arch sd15`` (512²,
25 steps) / ``sdxl`` (1024², 30 steps) (full-size architectures with random weights built from
their configs, benchmarks/archs.py: architecture, not weights, sets the speed), or ``--model DIR``
for a real local diffusers directory.

``--options default,bf16,channels-last+compile,...`` runs (c) once per option set (a fresh worker
each, the same Redis and S3 server) and prints each set's gain over ``default``; see
benchmarks/options.py for the syntax. ``--prompts repeat`` draws the jobs' prompts from a pool of
``--prompt-pool`` distinct prompts (different seeds), the load a prompt-embedding cache is for.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# build_sd15 / build_sdxl stay importable from here: the GPU kit's breakdown.py looks up build_<arch>.
from benchmarks.archs import DEFAULTS, FAMILY, build_sd15, build_sdxl  # noqa: E402,F401
from benchmarks.options import OptionSet, parse_options, summarise, table  # noqa: E402
from benchmarks.recorded import checkout  # noqa: E402

#: The worker settings the options turn on, recorded (with their defaults) where this checkout has them.
RENDER_SETTINGS = ("channels_last", "compile_unet", "compile_vae", "compile_mode", "compile_backend", "sdpa_backend",
                   "prompt_cache_size", "vae_slicing", "vae_tiling_above_pixels", "max_batch", "batch_window_ms",
                   "batch_max_wait_ms")


def load(source: str, device: str, dtype):
    import json as _json

    from diffusers import DiffusionPipeline

    index = Path(source) / "model_index.json"
    sd15 = not index.exists() or _json.loads(index.read_text()).get("_class_name") == "StableDiffusionPipeline"
    extra = {"safety_checker": None, "requires_safety_checker": False} if sd15 else {}
    pipe = DiffusionPipeline.from_pretrained(source, dtype=dtype, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def bare(pipe, device: str, batch: int, n_images: int, size: int, steps: int, guidance: float = 7.5) -> float:
    """Images/s of the bare pipeline, ``batch`` images per call."""
    import torch

    def call(k: int, offset: int) -> None:
        pipe(prompt=[f"a product photo {offset + i}" for i in range(k)], height=size, width=size,
             num_inference_steps=steps, guidance_scale=guidance,
             generator=[torch.Generator(device).manual_seed(offset + i) for i in range(k)])

    call(batch, 0)  # warm-up at this shape
    sync(device)
    t0 = time.perf_counter()
    done = 0
    while done < n_images:
        call(batch, done)
        done += batch
    sync(device)
    return done / (time.perf_counter() - t0)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def prompts(args, run: int) -> list[str]:
    """The jobs' prompts: all distinct, or drawn in turn from a pool of ``--prompt-pool``.

    ``run`` tags them so that no cache (prompt embeddings, moderation) carries over between the
    option sets of one benchmark run: every set starts cold and meets the same repetition.
    """
    pool = args.jobs if getattr(args, "prompts", "distinct") == "distinct" else args.prompt_pool
    return [f"a product photo {i % pool}, series {run}" for i in range(args.jobs)]


class Services:
    """What every option set shares: a home, Redis (embedded unless --redis-url) and a moto S3 server."""

    def __init__(self, args) -> None:
        import logging

        import boto3
        from moto.server import ThreadedMotoServer

        from jobs.embedded import redis_url_for
        from jobs.fleet import fresh_keys_env
        from jobs.settings import Settings

        self.home = Path(tempfile.mkdtemp(prefix="br-throughput-"))
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per S3 request
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=args.s3_port, verbose=False)
        self.moto.start()
        endpoint = f"http://127.0.0.1:{args.s3_port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x",
                     aws_secret_access_key="x").create_bucket(Bucket="bench")
        self.env = {
            "BATCHRENDER_HOME": str(self.home), "BATCHRENDER_STORAGE_URL": "s3://bench/renders",
            "BATCHRENDER_S3_ENDPOINT_URL": endpoint, "BATCHRENDER_S3_PATH_STYLE": "true",
            "BATCHRENDER_S3_ACCESS_KEY_ID": "x", "BATCHRENDER_S3_SECRET_ACCESS_KEY": "x",
            "BATCHRENDER_MAX_STEPS": "500", "BATCHRENDER_MAX_IMAGES": "64",
            **fresh_keys_env(allow_dev_c2pa=True),  # keys every process of a shared Redis must share
        }
        if args.redis_url:
            self.env["BATCHRENDER_REDIS_URL"] = args.redis_url
        self.env["BATCHRENDER_REDIS_URL"] = redis_url_for(Settings.from_env(self.env), start=True)
        self.settings = Settings.from_env(self.env)
        self.runs = 0

    def close(self) -> None:
        self.moto.stop()


def run_set(services: Services, args, source: str, family: str, device: str, dtype_name: str, batch: int,
            option: OptionSet = OptionSet("default")) -> dict:
    """(c) for one option set: a fresh worker, its warm-up job(s) untimed, then --jobs jobs at once."""
    import redis

    from jobs.registry import ModelSpec, Registry
    from jobs.settings import Settings
    from producer.client import Client
    from worker.batching import STATS_GAP_KEY, STATS_GAPS_KEY
    from worker.runner import STATS_BUSY_KEY, STATS_CALLS_KEY, STATS_ROWS_KEY

    services.runs += 1
    env = {**services.env, "BATCHRENDER_MAX_BATCH": str(batch), "BATCHRENDER_DEVICE": device, **option.env}
    Settings.from_env(env)  # a bad option value fails here, before a worker is started
    url = env["BATCHRENDER_REDIS_URL"]
    Registry(services.settings).register(ModelSpec(
        name="bench", source=source, dtype=option.dtype or dtype_name, family=family, base_size=args.size,
        default_steps=args.steps, default_guidance=args.guidance))
    r = redis.Redis.from_url(url)
    r.delete(STATS_BUSY_KEY)
    with open(services.home / "worker.log", "ab") as log:  # one log for all sets (the GPU kit collects it)
        log.write(f"\n==== option set {option.name}: dtype {option.dtype or dtype_name}, env {option.env}\n".encode())
        log.flush()
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-P", "solo", "-Q", "render.bench",
             "--without-gossip", "--without-mingle", "-n", f"bench{services.runs}@%h"],
            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)

    def alive(_rec) -> None:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode} (see {services.home / 'worker.log'})")

    try:
        client = Client(services.settings, redis_url=url)
        req = {"model": "bench", "width": args.size, "height": args.size, "steps": args.steps}
        for w in range(max(1, getattr(args, "warmup_jobs", 1))):  # model load, compilation: untimed
            rec = client.wait(client.submit({**req, "prompt": f"warm-up {w}", "seed": w}), timeout=900,
                              on_update=alive)
            if rec.status.value != "succeeded":
                raise RuntimeError(f"the warm-up job {rec.status.value}: {(rec.error or {}).get('message', rec.error)}")
        r.delete(STATS_BUSY_KEY, STATS_CALLS_KEY, STATS_ROWS_KEY, STATS_GAP_KEY, STATS_GAPS_KEY)
        t0 = time.perf_counter()
        requests = [{**req, "prompt": p, "seed": i} for i, p in enumerate(prompts(args, services.runs))]
        if getattr(args, "submit", "batch") == "batch":  # records written at once, messages back to back
            job_ids = client.submit_batch(requests).job_ids
        else:  # a burst of single submissions, as from many producers: jobs trickle in while it renders
            job_ids = [client.submit(x) for x in requests]
        records = [client.wait(j, timeout=3600, poll_s=0.02, on_update=alive) for j in job_ids]
        wall = time.perf_counter() - t0
        failed = [rec.status.value for rec in records if rec.status.value != "succeeded"]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(records)} jobs did not succeed: {sorted(set(failed))}")
        busy = float(r.get(STATS_BUSY_KEY) or 0)
        delivered = sum(len(rec.result.images) for rec in records)
        # Time between consecutive calls of a session: the GPU waiting for the session's own work
        # (pulling, claiming, moderating), as distinct from idle before the first and after the last call.
        gaps = int(r.get(STATS_GAPS_KEY) or 0)
        between = float(r.get(STATS_GAP_KEY) or 0)
        return {"c": delivered / wall, "idle": max(0.0, 1 - busy / wall), "calls": int(r.get(STATS_CALLS_KEY) or 0),
                "rows_rendered": int(r.get(STATS_ROWS_KEY) or 0), "images_delivered": delivered, "wall_s": wall,
                "busy_s": busy, "between_calls_s": between, "between_calls": gaps,
                "between_calls_share": between / wall}
    finally:
        worker.terminate()
        worker.wait(60)


def system(args, source: str, device: str, dtype_name: str, batch: int, family: str = "sd15") -> dict:
    """Images/s of the whole system, its GPU-idle fraction, and the calls and rows it rendered."""
    if not hasattr(args, "guidance"):
        args.guidance = 7.5
    services = Services(args)
    try:
        return run_set(services, args, source, family, device, dtype_name, batch)
    finally:
        services.close()


def family_of(source: str) -> str:
    """The registry family of a diffusers directory, from its model_index.json."""
    from jobs.families import family_of_pipeline

    name = json.loads((Path(source) / "model_index.json").read_text()).get("_class_name", "")
    fam = family_of_pipeline(name)
    if fam is None:
        raise SystemExit(f"{source}: {name or 'no _class_name'} is not a pipeline batchrender runs (sd15, sdxl, sd3, flux)")
    return fam


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(DEFAULTS), default=None,
                    help="random-weight architecture (default: sd15 on CUDA, tiny otherwise)")
    ap.add_argument("--model", help="a real local diffusers directory")
    ap.add_argument("--size", type=int, default=None, help="image side (default: tiny 64, sd15 512, sdxl 1024)")
    ap.add_argument("--steps", type=int, default=None, help="steps (default: tiny 4, sd15 25, sdxl 30)")
    ap.add_argument("--guidance", type=float, default=None, help="guidance scale (default: sd15 7.5, sdxl 5.0)")
    ap.add_argument("--jobs", type=int, default=64)
    ap.add_argument("--batches", default="1,2,4,8,16", help="batch sizes tried for (b)")
    ap.add_argument("--images", type=int, default=None, help="images per bare measurement")
    ap.add_argument("--redis-url", default=None)
    ap.add_argument("--s3-port", type=int, default=5077)
    ap.add_argument("--out", help="write the figures as JSON here (rewritten after each option set)")
    ap.add_argument("--submit", choices=["batch", "single"], default="batch",
                    help="queue the jobs as one batch, or as a burst of single submissions")
    ap.add_argument("--system-batch", type=int, default=None, help="max batch of (c) (default: the best of (b))")
    ap.add_argument("--options", default=None,
                    help="option sets to run (c) with, e.g. default,bf16,channels-last,compile,sdpa=flash,"
                         "prompt-cache,vae-slicing=always,bf16+channels-last+compile (benchmarks/options.py)")
    ap.add_argument("--compile-mode", default=None, help="BATCHRENDER_COMPILE_MODE for the 'compile' option")
    ap.add_argument("--compile-backend", default=None, help="BATCHRENDER_COMPILE_BACKEND for the 'compile' option")
    ap.add_argument("--prompts", choices=["distinct", "repeat"], default="distinct",
                    help="every job its own prompt, or prompts repeated from a pool (different seeds)")
    ap.add_argument("--prompt-pool", type=int, default=8, help="distinct prompts with --prompts repeat")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every option set this many times, round-robin; each set reports its median run")
    ap.add_argument("--warmup-jobs", type=int, default=1,
                    help="untimed jobs per worker before (c), one call each (compile modes may want 2-3)")
    args = ap.parse_args(argv)
    if args.prompt_pool < 1 or args.rounds < 1:
        ap.error("--prompt-pool and --rounds must be at least 1")
    try:
        args.option_sets = parse_options(args.options, args.compile_mode, args.compile_backend) if args.options else None
    except ValueError as e:
        ap.error(str(e))
    return args


def main() -> None:
    args = parse_args()

    import torch

    from jobs.settings import Settings

    device = "cuda" if torch.cuda.is_available() else "cpu"
    arch = args.arch or ("sd15" if device == "cuda" else "tiny")
    size, steps, guidance = DEFAULTS[arch]
    args.size, args.steps = args.size or size, args.steps or steps
    args.guidance = guidance if args.guidance is None else args.guidance
    dtype_name = "float16" if device == "cuda" else "float32"
    dtype = getattr(torch, dtype_name)
    work = Path(tempfile.mkdtemp(prefix="br-model-"))
    t_build = time.perf_counter()
    if args.model:
        source = args.model
    elif arch == "tiny":
        from worker.tiny import build_tiny_pipeline

        source = str(build_tiny_pipeline(work / "tiny"))
    else:
        source = str({"sd15": build_sd15, "sdxl": build_sdxl}[arch](work, device=device, dtype=dtype))
    family = family_of(source) if args.model else FAMILY[arch]
    pipe = load(source, device, dtype)
    build_s = time.perf_counter() - t_build
    n = args.images or max(16, args.jobs // 2)
    a = bare(pipe, device, 1, n, args.size, args.steps, args.guidance)
    per_batch = {}
    for b in [int(x) for x in args.batches.split(",")]:
        try:
            per_batch[b] = bare(pipe, device, b, max(n, b * 2), args.size, args.steps, args.guidance)
        except torch.OutOfMemoryError:
            break
    best = max(per_batch, key=per_batch.get)
    del pipe
    if device == "cuda":
        torch.cuda.empty_cache()

    import celery
    import diffusers

    batch = args.system_batch or best
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine()
    out = {
        "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:]),
        "device": device, "gpu": gpu, "arch": args.model or arch, "family": family, "size": args.size,
        "steps": args.steps, "guidance": args.guidance, "dtype": dtype_name, "jobs": args.jobs, "submit": args.submit,
        "prompts": args.prompts if args.prompts == "distinct" else f"repeat:{args.prompt_pool}",
        "system_batch": batch, "build_and_load_s": build_s, "a": a, "per_batch": per_batch, "best": best,
        "checkout": checkout(),
        "worker_settings": {k: Settings.model_fields[k].default for k in RENDER_SETTINGS if k in Settings.model_fields},
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "celery": celery.__version__,
                     "python": platform.python_version()},
    }

    def write() -> None:
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(out, indent=2) + "\n")

    sets = args.option_sets or [OptionSet("default")]
    runs: dict[str, list[dict]] = {o.name: [] for o in sets}
    results: dict[str, dict] = {}
    services = Services(args)
    try:
        for rnd in range(args.rounds):  # round-robin, so drift over time does not favour one set
            for option in sets:
                about = {"env": option.env, "dtype": option.dtype or dtype_name}
                missing = option.missing(Settings.model_fields)
                if missing:  # the worker refuses unknown BATCHRENDER_* variables: nothing to measure
                    results[option.name] = {**about, "skipped": f"{', '.join(missing)} not in this checkout's "
                                                                f"jobs/settings.py"}
                else:
                    try:
                        runs[option.name].append(run_set(services, args, source, family, device, dtype_name, batch,
                                                         option))
                    except Exception as e:  # noqa: BLE001 - one failing set must not lose the others' figures
                        if option.name == "default":
                            raise
                        about["error"] = f"{type(e).__name__}: {e}"
                    done = sorted(runs[option.name], key=lambda x: x["c"])
                    # the median run (the lower one of an even count) stands for the set
                    results[option.name] = {**done[(len(done) - 1) // 2], **about,
                                            "c_runs": [x["c"] for x in runs[option.name]]} if done else about
                if option.name == "default":
                    out.update({k: results["default"][k] for k in
                                ("c", "idle", "calls", "rows_rendered", "images_delivered", "wall_s", "busy_s",
                                 "between_calls_s", "between_calls", "between_calls_share")})
                    out["rows_per_image"] = out["rows_rendered"] / max(1, out["images_delivered"])
                if args.option_sets:
                    out["options"] = {o.name: results[o.name] for o in sets if o.name in results}
                    out["best_option"], out["best_option_over_b"] = summarise(out["options"], per_batch[best])
                out["rounds_done"] = rnd + (option is sets[-1])
                write()
    finally:
        services.close()

    c, idle = out["c"], out["idle"]
    print(f"device: {device} ({gpu}); torch {torch.__version__}, diffusers {diffusers.__version__}, "
          f"celery {celery.__version__}, Python {platform.python_version()}")
    print(f"model: {args.model or arch}, {args.size}x{args.size}, {args.steps} steps, {dtype_name}, "
          f"{args.jobs} jobs queued, prompts {out['prompts']}\n")
    print(f"{'':<46}{'images/s':>10}")
    print(f"{'(a) bare pipeline, one image per call':<46}{a:>10.2f}")
    for b, v in per_batch.items():
        print(f"{'    bare pipeline, batch ' + str(b):<46}{v:>10.2f}")
    print(f"{'(b) bare pipeline, best batch (' + str(best) + ')':<46}{per_batch[best]:>10.2f}")
    print(f"{'(c) batchrender end to end (batch ' + str(batch) + ')':<46}{c:>10.2f}")
    print(f"\nc/b = {c / per_batch[best]:.2f}   c/a = {c / a:.2f}   GPU idle during (c): {idle:.0%}")
    rows, delivered = out["rows_rendered"], out["images_delivered"]
    print(f"(c) made {out['calls']} pipeline calls rendering {rows} rows for {delivered} images: "
          f"rows/images = {rows / max(1, delivered):.3f} (1.000 = no padding waste)")
    n_gaps = out["between_calls"]
    print(f"(c) time between consecutive calls of a session: {out['between_calls_s']:.3f} s over {n_gaps} gaps "
          f"({out['between_calls_s'] / max(1, n_gaps) * 1000:.1f} ms each, {out['between_calls_share']:.1%} of wall); "
          f"inside calls {out['busy_s']:.2f} s of {out['wall_s']:.2f} s")
    if args.option_sets:
        print(f"\nrender options, (c) per set (gain: c / c of 'default'; a fresh worker per set; "
              f"median of {args.rounds} round(s)):\n")
        print(table(out["options"], out["best_option"], f"batch {best}", per_batch[best]))


if __name__ == "__main__":
    main()
