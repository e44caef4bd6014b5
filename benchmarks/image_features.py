"""Transparent backgrounds and palette reports: what they add to a delivery, next to what it pays anyway.

For each test image at each size, every operation runs once per round, round-robin (so drift on
shared cores hits all of them alike), after one untimed warm-up round; each figure is the median
over the rounds. Operations, as ``worker/deliver.py`` calls them:

* baselines: ``convert("RGBA")`` (a copy of the pixels) and the PNG encoding of the render
  (``worker.encode.encode``, what every PNG delivery pays);
* ``cut_out`` without a matting model (``worker/cutout.py``: keying, feathering, decontamination),
  and the PNG encoding of its RGBA result (a transparent job encodes that instead of the render);
* ``palette_report`` (``worker/colour.py``) on the render (an opaque job with a palette) and on
  the cutout (a transparent one: the alpha weights the pixels).

Test images, drawn with numpy/PIL: ``product``, a shaded mug on a keyable green backdrop that is
not quite flat (a soft gradient and sensor-like noise, anti-aliased edges), what the steered prompt
asks the model for; ``noise``, uniform random RGB, the worst case (nothing to key, PNG cannot
compress it, every sampled pixel distinct for the k-means).

Prints a table; with ``--out`` writes the figures, the command, the machine and the versions as
JSON. Asserts nothing.

    .venv/bin/python benchmarks/image_features.py --out benchmarks/results/image-features-cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.recorded import checkout  # noqa: E402

#: The palette of the README's example request.
PALETTE = ["#1A73E8", "#FBBC05"]
BACKDROP = (0x00, 0xB1, 0x40)  # worker.cutout.BACKDROPS' green


def product_shot(side: int, seed: int = 0) -> Image.Image:
    """A blue mug with a yellow band and a handle on a green studio backdrop, as a render might be:
    cylindrical shading, a highlight, a backdrop with a gentle gradient and noise, soft edges."""
    n = 2 * side  # drawn at twice the size, then reduced: anti-aliased edges mixed with the backdrop
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) / n
    img = np.empty((n, n, 3), np.float32)
    img[:] = BACKDROP
    img *= (0.96 + 0.08 * y)[..., None]  # light falls off a little towards the floor
    cx, top, bottom, half = 0.46, 0.28, 0.78, 0.19
    body = (np.abs(x - cx) <= half) & (y >= top) & (y <= bottom)
    body |= ((x - cx) / half) ** 2 + ((y - bottom) / 0.04) ** 2 <= 1  # rounded base
    u = np.clip((x - cx) / half, -1, 1)
    shade = 0.55 + 0.45 * np.sqrt(1 - u**2) + 0.25 * np.exp(-((u + 0.45) / 0.08) ** 2)  # cylinder + highlight
    blue = np.array([0x1A, 0x73, 0xE8], np.float32)
    yellow = np.array([0xFB, 0xBC, 0x05], np.float32)
    colour = np.where(((y > 0.50) & (y < 0.58))[..., None], yellow, blue)
    img = np.where(body[..., None], np.clip(colour * shade[..., None], 0, 255), img)
    rim = ((x - cx) / half) ** 2 + ((y - top) / 0.035) ** 2 <= 1
    img = np.where(rim[..., None], np.array([0x10, 0x4A, 0x9A], np.float32), img)  # the inside, darker
    r = np.hypot((x - (cx + half)) / 0.11, (y - 0.52) / 0.14)
    handle = (r >= 0.62) & (r <= 1.0) & (x > cx + half)
    img = np.where(handle[..., None], np.clip(blue * 0.8, 0, 255), img)
    small = Image.fromarray(np.round(img).astype(np.uint8), "RGB").resize((side, side), Image.Resampling.LANCZOS)
    noisy = np.asarray(small, np.float32) + np.random.default_rng(seed).normal(0, 2.5, (side, side, 3))
    return Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8), "RGB")


def noise(side: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8), "RGB")


IMAGES: dict[str, Callable[[int], Image.Image]] = {"product": product_shot, "noise": noise}


def operations(render: Image.Image) -> dict[str, Callable[[], object]]:
    """The timed operations on one render, named as in the table (baselines first)."""
    from jobs.schemas import OutputFormat
    from worker.colour import palette_report
    from worker.cutout import cut_out
    from worker.encode import encode

    cutout = cut_out(render).image
    return {
        "rgba_convert": lambda: render.convert("RGBA"),
        "png_render": lambda: encode(render, OutputFormat.PNG, 90),
        "keying": lambda: cut_out(render),
        "png_cutout": lambda: encode(cutout, OutputFormat.PNG, 90),
        "palette_render": lambda: palette_report(render, PALETTE),
        "palette_cutout": lambda: palette_report(cutout, PALETTE),
    }


def measure(ops: dict[str, Callable[[], object]], rounds: int) -> dict[str, dict]:
    for fn in ops.values():  # warm-up: imports, first allocations
        fn()
    times: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(rounds):
        for name, fn in ops.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: {"median_s": statistics.median(xs), "min_s": min(xs), "max_s": max(xs),
                   "times_s": [round(x, 5) for x in xs]} for name, xs in times.items()}


def machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "arch": platform.machine(), "cores": os.cpu_count(), "system": platform.platform()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="512,1024", help="image sides, comma-separated")
    ap.add_argument("--images", default="product,noise", help=f"test images, of {','.join(IMAGES)}")
    ap.add_argument("--rounds", type=int, default=15, help="timed rounds per image and size (the median is reported)")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()

    import cv2
    import PIL

    from worker.cutout import cut_out

    info = {"machine": machine(), "versions": {"python": platform.python_version(), "numpy": np.__version__,
                                                "pillow": PIL.__version__, "opencv": cv2.__version__},
            "cv2_threads": cv2.getNumThreads()}
    print(f"machine: {info['machine']['cpu']}, {info['machine']['cores']} cores; Python {platform.python_version()}, "
          f"numpy {np.__version__}, Pillow {PIL.__version__}, OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads)")
    print(f"median of {args.rounds} rounds, ms; x = times the PNG encoding of the render (baseline)\n")
    head = (f"{'image':<9}{'side':>6} | {'RGBA conv':>9}{'PNG':>8} | {'keying':>8}{'x':>6}{'PNG cut':>9} | "
            f"{'palette':>8}{'x':>6}{'pal. cut':>9} | {'keyed':>6}")
    print(head)
    print("-" * len(head))
    load_before = os.getloadavg()
    results = []
    for name in args.images.split(","):
        for side in (int(s) for s in args.sizes.split(",")):
            render = IMAGES[name](side)
            report = cut_out(render).report
            m = measure(operations(render), args.rounds)
            ms = {k: v["median_s"] * 1000 for k, v in m.items()}
            print(f"{name:<9}{side:>6} | {ms['rgba_convert']:>9.1f}{ms['png_render']:>8.1f} | {ms['keying']:>8.1f}"
                  f"{ms['keying'] / ms['png_render']:>6.1f}{ms['png_cutout']:>9.1f} | {ms['palette_render']:>8.1f}"
                  f"{ms['palette_render'] / ms['png_render']:>6.1f}{ms['palette_cutout']:>9.1f} | "
                  f"{report['coverage']:>6.0%}")
            results.append({"image": name, "side": side, "rounds": args.rounds, "ops": m,
                            "cutout": {k: report[k] for k in ("coverage", "opaque", "partial", "backdrop")}})
    load_after = os.getloadavg()
    print(f"\nkeyed: share of pixels the cutout made fully transparent. "
          f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after")

    if args.out:
        out = {"command": "python benchmarks/image_features.py " + " ".join(sys.argv[1:]), **info,
               "checkout": checkout(), "palette": PALETTE, "baseline": "png_render",
               "load_average_1m": {"before": load_before[0], "after": load_after[0]}, "results": results}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
