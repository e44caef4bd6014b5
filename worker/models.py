"""Per-process model cache: each pipeline is loaded once, after fork, through ``from_pretrained``.

Holds up to ``capacity`` pipelines and evicts the least recently used one; on CUDA it also evicts
while free memory is under what the next model needs (estimated from its parameters), so a worker
can serve several models without running out of GPU memory.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.errors import ConfigurationError, PermanentError
from jobs.families import family_of_pipeline
from jobs.registry import ModelSpec

log = logging.getLogger(__name__)

#: ``from_pretrained`` arguments per family: SD 1.5 has a safety checker slot (moderation is ours);
#: SDXL would add an invisible watermark when the package is installed (C2PA is the provenance).
_LOAD_KWARGS: dict[str, dict[str, Any]] = {
    "sd15": dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False),
    "sdxl": dict(add_watermarker=False),
}


def pick_device(requested: str | None) -> str:
    import torch

    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigurationError(f"device {requested!r} requested but CUDA is not available")
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # half precision on CPU is slower and less exact
    return getattr(torch, dtype)


@dataclass
class Loaded:
    spec: ModelSpec
    pipe: Any
    device: str
    load_s: float
    bytes: int
    vae_tiling_above: int = 1536 * 1536

    def prepare_for(self, width: int, height: int) -> None:
        """Per call shape: VAE tiling for large images (deterministic for a given shape)."""
        vae = getattr(self.pipe, "vae", None)
        if vae is None or not hasattr(vae, "enable_tiling"):
            return
        if width * height >= self.vae_tiling_above:
            vae.enable_tiling()
        else:
            vae.disable_tiling()


class ModelCache:
    def __init__(self, capacity: int = 2, device: str | None = None, *, channels_last: bool = False,
                 compile_unet: bool = False, vae_tiling_above: int = 1536 * 1536) -> None:
        self.capacity = max(1, capacity)
        self.device_override = device
        self.channels_last = channels_last
        self.compile_unet = compile_unet
        self.vae_tiling_above = vae_tiling_above
        self._items: OrderedDict[str, Loaded] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, spec: ModelSpec) -> tuple[Loaded, float]:
        """The loaded pipeline and the seconds spent loading it now (0 when cached)."""
        with self._lock:
            hit = self._items.get(spec.name)
            if hit is not None and hit.spec == spec:
                self._items.move_to_end(spec.name)
                return hit, 0.0
            loaded = self._load(spec)
            self._items[spec.name] = loaded
            self._items.move_to_end(spec.name)
            while len(self._items) > self.capacity:
                self._evict()
            return loaded, loaded.load_s

    def _evict(self) -> None:
        name, old = self._items.popitem(last=False)
        log.info("evicting model %s from the cache", name)
        del old
        import gc

        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # pragma: no cover - best effort
            pass

    def _make_room(self, need: int, device: str) -> None:
        import torch

        if not device.startswith("cuda"):
            return
        while self._items:
            free, _ = torch.cuda.mem_get_info(torch.device(device))
            if free > need * 1.5:
                return
            self._evict()

    def _load(self, spec: ModelSpec) -> Loaded:
        import torch
        from diffusers import DiffusionPipeline

        device = pick_device(self.device_override or spec.device)
        dtype = pick_dtype(spec.dtype, device)
        source = spec.source
        if spec.tiny and not Path(source).exists():
            log.info("writing the tiny random-weight model to %s (first use)", source)
            if spec.family == "sd15":
                from worker.tiny import build_tiny_pipeline

                build_tiny_pipeline(Path(source))
            else:
                from worker.tiny_families import build_tiny_family

                build_tiny_family(spec.family, Path(source))
        started = time.perf_counter()
        try:
            pipe = DiffusionPipeline.from_pretrained(source, dtype=dtype, local_files_only=Path(source).exists(),
                                                     **_LOAD_KWARGS.get(spec.family, {}))
        except (OSError, ValueError) as e:
            raise PermanentError(f"model {spec.name!r} could not be loaded from {source!r}: {e}") from e
        loaded_family = family_of_pipeline(type(pipe).__name__)
        if loaded_family != spec.family:
            raise ConfigurationError(
                f"model {spec.name!r} is registered as family {spec.family!r} but {source!r} holds a "
                f"{type(pipe).__name__} ({loaded_family or 'unsupported family'}); register it again with "
                f"--family {loaded_family or 'sd15|sdxl|sd3|flux'}")
        if spec.scheduler:
            import diffusers

            cls = getattr(diffusers, spec.scheduler, None)
            if cls is None:
                raise ConfigurationError(f"model {spec.name!r}: unknown scheduler {spec.scheduler!r}")
            pipe.scheduler = cls.from_config(pipe.scheduler.config)
        if spec.ip_adapter:
            load_ip_adapter(pipe, spec)
        n_bytes = sum(p.numel() * p.element_size() for c in pipe.components.values()
                      if isinstance(c, torch.nn.Module) for p in c.parameters())
        self._make_room(n_bytes, device)
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        # SDPA is diffusers' default attention processor on torch 2; channels-last helps convs on GPU.
        if self.channels_last and hasattr(pipe, "unet"):
            pipe.unet.to(memory_format=torch.channels_last)
        # Decode the images of a batch one at a time on GPUs: same pixels, a fraction of the peak memory.
        if device.startswith("cuda") and hasattr(pipe, "vae") and hasattr(pipe.vae, "enable_slicing"):
            pipe.vae.enable_slicing()
        if self.compile_unet and hasattr(pipe, "unet"):
            pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=False)
        load_s = time.perf_counter() - started
        log.info("loaded model %s on %s (%s) in %.2fs", spec.name, device, dtype, load_s)
        return Loaded(spec, pipe, device, load_s, n_bytes, self.vae_tiling_above)

    def __contains__(self, name: str) -> bool:
        return name in self._items


def load_ip_adapter(pipe, spec: ModelSpec) -> None:
    """Load the model directory's IP-Adapter (jobs' ``references``). Its scale is set per call
    (worker/render.py): 0 for calls without references, which then render exactly as without it."""
    from jobs.registry import IP_ADAPTER_DIR, IP_ADAPTER_ENCODER, IP_ADAPTER_WEIGHTS, has_ip_adapter

    if not has_ip_adapter(spec.source):
        raise ConfigurationError(f"model {spec.name!r} is registered with an IP-Adapter but {spec.source!r} has no "
                                 f"{IP_ADAPTER_DIR}/{IP_ADAPTER_WEIGHTS} with {IP_ADAPTER_DIR}/{IP_ADAPTER_ENCODER}")
    try:
        pipe.load_ip_adapter(spec.source, subfolder=IP_ADAPTER_DIR, weight_name=IP_ADAPTER_WEIGHTS,
                             image_encoder_folder=IP_ADAPTER_ENCODER, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise PermanentError(f"model {spec.name!r}: its IP-Adapter could not be loaded: {e}") from e
    pipe._batchrender_ip_adapter = True
