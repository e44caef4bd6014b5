"""GPU throughput: the system end to end versus the bare diffusers pipeline, on one device.

(a) the bare pipeline called once per image
(b) the bare pipeline at its best batch size
(c) this system end to end: Redis, a worker process, moderation, C2PA signing and upload to an
    S3-compatible endpoint (moto on loopback), with --jobs jobs queued at once

Prints images/s for each, the ratios c/b and c/a, and the GPU-idle fraction of (c) (wall time not
spent inside pipeline calls). Models: ``--arch tiny`` (the CPU default), ``--arch sd15`` / ``sdxl``
(full-size architectures with random weights built from their configs: architecture, not weights,
sets the speed), or ``--model DIR`` for a real local diffusers directory.
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


def build_sd15(target: Path) -> Path:
    """Stable Diffusion 1.5's architecture (UNet 860M, VAE, CLIP ViT-L/14 text encoder), random weights."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from worker.tiny import _write_tokenizer

    torch.manual_seed(0)
    vocab = _write_tokenizer(target / "_tok")
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1))
    tok = CLIPTokenizer(str(target / "_tok" / "vocab.json"), str(target / "_tok" / "merges.txt"), model_max_length=77)
    sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                          steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tok, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(target / "pipeline")
    return target / "pipeline"


def load(source: str, device: str, dtype):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(source, dtype=dtype, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def bare(pipe, device: str, batch: int, n_images: int, size: int, steps: int) -> float:
    """Images/s of the bare pipeline, ``batch`` images per call."""
    import torch

    def call(k: int, offset: int) -> None:
        pipe(prompt=[f"a product photo {offset + i}" for i in range(k)], height=size, width=size,
             num_inference_steps=steps, guidance_scale=7.5,
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


def system(args, source: str, device: str, dtype_name: str, batch: int) -> dict:
    """Images/s of the whole system, its GPU-idle fraction, and the calls and rows it rendered."""
    import boto3
    import redis
    from moto.server import ThreadedMotoServer

    from jobs.embedded import redis_url_for
    from jobs.registry import ModelSpec, Registry
    from jobs.settings import Settings
    from producer.client import Client
    from worker.runner import STATS_BUSY_KEY, STATS_CALLS_KEY, STATS_ROWS_KEY

    home = Path(tempfile.mkdtemp(prefix="br-throughput-"))
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=args.s3_port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{args.s3_port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x",
                 aws_secret_access_key="x").create_bucket(Bucket="bench")
    env = {
        "BATCHRENDER_HOME": str(home), "BATCHRENDER_STORAGE_URL": "s3://bench/renders",
        "BATCHRENDER_S3_ENDPOINT_URL": endpoint, "BATCHRENDER_S3_PATH_STYLE": "true",
        "BATCHRENDER_S3_ACCESS_KEY_ID": "x", "BATCHRENDER_S3_SECRET_ACCESS_KEY": "x",
        "BATCHRENDER_MAX_BATCH": str(batch), "BATCHRENDER_DEVICE": device,
        "BATCHRENDER_MAX_STEPS": "500", "BATCHRENDER_MAX_IMAGES": "64",
    }
    if args.redis_url:
        env["BATCHRENDER_REDIS_URL"] = args.redis_url
    settings = Settings.from_env(env)
    url = redis_url_for(settings, start=True)
    env["BATCHRENDER_REDIS_URL"] = url
    settings = Settings.from_env(env)
    Registry(settings).register(ModelSpec(name="bench", source=source, dtype=dtype_name, base_size=args.size,
                                          default_steps=args.steps, default_guidance=7.5))
    redis.Redis.from_url(url).delete(STATS_BUSY_KEY)
    log = open(home / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-P", "solo", "-Q",
                               "render.bench", "--without-gossip", "--without-mingle", "-n", "bench@%h"],
                              env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = Client(settings, redis_url=url)
        req = {"model": "bench", "width": args.size, "height": args.size, "steps": args.steps}
        client.wait(client.submit({**req, "prompt": "warm-up", "seed": 0}), timeout=900)  # model load
        r = redis.Redis.from_url(url)
        r.delete(STATS_BUSY_KEY, STATS_CALLS_KEY, STATS_ROWS_KEY)
        t0 = time.perf_counter()
        requests = [{**req, "prompt": f"a product photo {i}", "seed": i} for i in range(args.jobs)]
        if args.submit == "batch":  # one batch: records written at once, messages published back to back
            job_ids = client.submit_batch(requests).job_ids
        else:  # a burst of single submissions, as from many producers: jobs trickle in while it renders
            job_ids = [client.submit(x) for x in requests]
        records = [client.wait(j, timeout=3600, poll_s=0.02) for j in job_ids]
        wall = time.perf_counter() - t0
        assert all(rec.status.value == "succeeded" for rec in records), [rec.status for rec in records]
        busy = float(r.get(STATS_BUSY_KEY) or 0)
        delivered = sum(len(rec.result.images) for rec in records)
        return {"c": delivered / wall, "idle": max(0.0, 1 - busy / wall), "calls": int(r.get(STATS_CALLS_KEY) or 0),
                "rows_rendered": int(r.get(STATS_ROWS_KEY) or 0), "images_delivered": delivered, "wall_s": wall}
    finally:
        worker.terminate()
        worker.wait(60)
        moto.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["tiny", "sd15"], default=None)
    ap.add_argument("--model", help="a real local diffusers directory")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=64)
    ap.add_argument("--batches", default="1,2,4,8,16", help="batch sizes tried for (b)")
    ap.add_argument("--images", type=int, default=None, help="images per bare measurement")
    ap.add_argument("--redis-url", default=None)
    ap.add_argument("--s3-port", type=int, default=5077)
    ap.add_argument("--out", help="write the figures as JSON here")
    ap.add_argument("--submit", choices=["batch", "single"], default="batch",
                    help="queue the jobs as one batch, or as a burst of single submissions")
    ap.add_argument("--system-batch", type=int, default=None, help="max batch of (c) (default: the best of (b))")
    args = ap.parse_args()

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    arch = args.arch or ("sd15" if device == "cuda" else "tiny")
    args.size = args.size or (512 if arch == "sd15" else 64)
    args.steps = args.steps or (25 if arch == "sd15" else 4)
    dtype_name = "float16" if device == "cuda" else "float32"
    dtype = getattr(torch, dtype_name)
    work = Path(tempfile.mkdtemp(prefix="br-model-"))
    if args.model:
        source = args.model
    elif arch == "sd15":
        source = str(build_sd15(work))
    else:
        from worker.tiny import build_tiny_pipeline

        source = str(build_tiny_pipeline(work / "tiny"))
    pipe = load(source, device, dtype)
    n = args.images or max(16, args.jobs // 2)
    a = bare(pipe, device, 1, n, args.size, args.steps)
    per_batch = {}
    for b in [int(x) for x in args.batches.split(",")]:
        try:
            per_batch[b] = bare(pipe, device, b, max(n, b * 2), args.size, args.steps)
        except torch.OutOfMemoryError:
            break
    best = max(per_batch, key=per_batch.get)
    del pipe
    if device == "cuda":
        torch.cuda.empty_cache()
    sys_figures = system(args, source, device, dtype_name, args.system_batch or best)
    c, idle = sys_figures["c"], sys_figures["idle"]

    import celery
    import diffusers

    gpu = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({gpu}); torch {torch.__version__}, diffusers {diffusers.__version__}, "
          f"celery {celery.__version__}, Python {platform.python_version()}")
    print(f"model: {args.model or arch}, {args.size}x{args.size}, {args.steps} steps, {dtype_name}, "
          f"{args.jobs} jobs queued\n")
    print(f"{'':<46}{'images/s':>10}")
    print(f"{'(a) bare pipeline, one image per call':<46}{a:>10.2f}")
    for b, v in per_batch.items():
        print(f"{'    bare pipeline, batch ' + str(b):<46}{v:>10.2f}")
    print(f"{'(b) bare pipeline, best batch (' + str(best) + ')':<46}{per_batch[best]:>10.2f}")
    print(f"{'(c) batchrender end to end (batch ' + str(args.system_batch or best) + ')':<46}{c:>10.2f}")
    print(f"\nc/b = {c / per_batch[best]:.2f}   c/a = {c / a:.2f}   GPU idle during (c): {idle:.0%}")
    rows, delivered = sys_figures["rows_rendered"], sys_figures["images_delivered"]
    print(f"(c) made {sys_figures['calls']} pipeline calls rendering {rows} rows for {delivered} images: "
          f"rows/images = {rows / max(1, delivered):.3f} (1.000 = no padding waste)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:]),
            "device": device, "gpu": gpu, "arch": args.model or arch, "size": args.size, "steps": args.steps,
            "jobs": args.jobs, "submit": args.submit, "system_batch": args.system_batch or best, "a": a, "per_batch": per_batch, "best": best, **sys_figures,
            "rows_per_image": rows / max(1, delivered),
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "celery": celery.__version__,
                         "python": platform.python_version()}}, indent=2))


if __name__ == "__main__":
    main()
