"""Per-process model cache: each pipeline is loaded once, after fork, through ``from_pretrained``.

Holds up to ``capacity`` pipelines and evicts the least recently used one; on CUDA it also evicts
while free memory is under what the next model needs (estimated from its parameters), so a worker
can serve several models without running out of GPU memory.

Render options (jobs/settings.py, docs/render-options.md), each opt-in: channels-last, ``torch.compile``
of the denoiser and the VAE decoder with bounded recompiles, a forced SDPA kernel (refused at load
when the device cannot run it), and VAE slicing/tiling decided per call from free memory.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

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


#: Peak decode bytes per output pixel and image of an SD-style VAE (SD 1.5, SDXL, SD3 and FLUX share
#: its decoder: 512-512-256-128 channels) at 4 bytes per value. Measured on CPU (float32, random
#: weights, math attention; peak RSS over the loaded model): 512² batch 1 3,540 bytes/px (about 3,050
#: without the attention matrix, which fused GPU kernels never hold), 384² batch 1 3,290, 512² batch 2
#: 2,890 per image; taken as 3,600 (900 values a pixel), scaled by ``dtype_bytes / 4``: a 1024² image
#: needs ~1.9 GB in 16-bit, ~3.8 GB where the VAE runs in float32 (SDXL's upcast).
VAE_DECODE_BYTES_PER_PIXEL = 3600
#: Share of free memory a decode may plan to use (the rest is the allocator's and other work's).
VAE_MEMORY_HEADROOM = 0.8


class VaePlan(NamedTuple):
    slicing: bool
    tiling: bool


def vae_decode_bytes(pixels: int, rows: int, dtype_bytes: int) -> int:
    """Estimated peak bytes of decoding ``rows`` images of ``pixels`` pixels at once."""
    return int(pixels * rows * VAE_DECODE_BYTES_PER_PIXEL * dtype_bytes / 4)


def vae_plan(width: int, height: int, rows: int, free_bytes: int | None, dtype_bytes: int, *,
             tile_pixels: int | None = None, tiling_above: int = 1536 * 1536, slicing: str = "auto") -> VaePlan:
    """Whether a call of ``rows`` images of ``width`` x ``height`` decodes with VAE slicing and tiling.

    Tiling: at or above ``tiling_above`` pixels (BATCHRENDER_VAE_TILING_ABOVE_PIXELS) only, a
    property of the call shape. Tiles are blended at their seams, which visibly changes an image,
    so free memory never turns it on. Slicing (``slicing="auto"``): when the call's images (or
    tiles, ``tile_pixels`` each, when tiling) decoded together would not fit in
    ``VAE_MEMORY_HEADROOM`` of ``free_bytes``; ``"always"``/``"never"`` force it. ``free_bytes``
    None: memory is plenty.

    Slicing decodes the images one at a time, which may change the last bits of their pixels (a
    kernel picks its tiling by batch size): it turns on only when the call would not fit otherwise,
    and a render's pixels then depend on the free memory at the time of the call.
    """
    pixels = width * height
    budget = float("inf") if free_bytes is None else free_bytes * VAE_MEMORY_HEADROOM
    tiling = pixels >= tiling_above
    per_decode = min(pixels, tile_pixels) if tiling and tile_pixels else pixels
    if slicing == "always":
        sliced = True
    elif slicing == "never":
        sliced = False
    else:
        sliced = rows > 1 and vae_decode_bytes(per_decode, rows, dtype_bytes) > budget
    if not tiling and vae_decode_bytes(pixels, 1, dtype_bytes) > budget:
        log.warning("one %dx%d image needs about %.1f GB to decode and %.1f GB is free: the decode may run out "
                    "of memory; lower BATCHRENDER_VAE_TILING_ABOVE_PIXELS to tile it", width, height,
                    vae_decode_bytes(pixels, 1, dtype_bytes) / 1e9, (free_bytes or 0) / 1e9)
    return VaePlan(sliced, tiling)


def free_memory(device: str) -> int | None:
    """Bytes free for a decode on ``device``: CUDA's free memory plus what torch's caching allocator
    holds unused; on CPU the kernel's MemAvailable; None when unknown (treated as plenty)."""
    if device.startswith("cuda"):
        import torch

        dev = torch.device(device)
        free, _ = torch.cuda.mem_get_info(dev)
        return free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def vae_dtype_bytes(vae) -> int:
    """Bytes per value of the decode: an fp16 VAE whose config asks for it (SDXL's) decodes in fp32."""
    import torch

    dtype = vae.dtype
    if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        return 4
    return torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4


@dataclass
class Loaded:
    spec: ModelSpec
    pipe: Any
    device: str
    load_s: float
    bytes: int
    vae_tiling_above: int = 1536 * 1536
    #: BATCHRENDER_VAE_SLICING: auto, always or never.
    vae_slicing: str = "auto"
    #: ``free_memory(device) -> bytes or None``; tests pass a small figure.
    free_memory: Callable[[str], int | None] = field(default=free_memory, repr=False)
    #: The plan of the last call (logged when it changes).
    vae_plan: VaePlan | None = None

    def prepare_for(self, width: int, height: int, rows: int = 1) -> VaePlan | None:
        """Per call (``rows`` images of ``width`` x ``height``, padding included): VAE slicing and
        tiling only when memory requires them (``vae_plan``: they may change the last bits of the
        pixels, so they stay off while the call fits)."""
        vae = getattr(self.pipe, "vae", None)
        if vae is None or not hasattr(vae, "enable_tiling"):
            return None
        tile = getattr(vae, "tile_sample_min_size", None)
        plan = vae_plan(width, height, rows, self.free_memory(self.device), vae_dtype_bytes(vae),
                        tile_pixels=tile * tile if isinstance(tile, int) else None,
                        tiling_above=self.vae_tiling_above, slicing=self.vae_slicing)
        (vae.enable_tiling if plan.tiling else vae.disable_tiling)()
        if hasattr(vae, "enable_slicing"):
            (vae.enable_slicing if plan.slicing else vae.disable_slicing)()
        if plan != self.vae_plan:
            log.info("model %s, %d x %dx%d per call: VAE slicing %s, tiling %s", self.spec.name, rows, width, height,
                     "on" if plan.slicing else "off", "on" if plan.tiling else "off")
            self.vae_plan = plan
        return plan


#: BATCHRENDER_SDPA_BACKEND values and torch's ``SDPBackend`` members.
SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                 "math": "MATH"}


def sdpa_context(pipe):
    """The context a pipeline call runs in: ``sdpa_kernel`` of the model's forced SDPA backend, or
    nothing (torch's own choice)."""
    name = getattr(pipe, "_batchrender_sdpa_backend", None)
    if not name:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # With math allowed too: attention the chosen kernel cannot run falls back to it instead of
    # failing. That covers the VAE's one-head attention (head size 512, past flash's limit) and,
    # since torch keeps these switches process-wide, the moderation classifiers that other
    # threads of the worker run during the call.
    chosen = getattr(SDPBackend, SDPA_BACKENDS[name])
    return sdpa_kernel([chosen] if chosen == SDPBackend.MATH else [chosen, SDPBackend.MATH])


def _head_dims(pipe) -> set[int]:
    """Attention head sizes of the pipeline's denoiser (``unet`` or ``transformer``: diffusers'
    ``Attention``, transformers' ``head_dim``), where a forced kernel is meant to run."""
    import torch

    dims: set[int] = set()
    for attr in ("unet", "transformer"):
        comp = getattr(pipe, attr, None)
        if not isinstance(comp, torch.nn.Module):
            continue
        for mod in comp.modules():
            heads, inner = getattr(mod, "heads", None), getattr(mod, "inner_dim", None)
            if isinstance(heads, int) and isinstance(inner, int) and heads > 0:
                dims.add(inner // heads)
            elif isinstance(getattr(mod, "head_dim", None), int):
                dims.add(mod.head_dim)
    return dims or {64}


def sdpa_backends_that_run(device: str, dtype, head_dims: set[int]) -> list[str]:
    """The SDPA backends that run attention of these head sizes on ``device`` in ``dtype``
    (cross- and causal self-attention, the shapes a pipeline call uses)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    ok = []
    for name, member in SDPA_BACKENDS.items():
        try:
            with sdpa_kernel(getattr(SDPBackend, member)), torch.inference_mode():
                for d in sorted(head_dims):
                    q = torch.randn(1, 2, 16, d, device=device, dtype=dtype)
                    kv = torch.randn(1, 2, 77, d, device=device, dtype=dtype)
                    F.scaled_dot_product_attention(q, kv, kv)
                    F.scaled_dot_product_attention(kv, kv, kv, is_causal=True)
        except RuntimeError:
            continue
        ok.append(name)
    return ok


def check_sdpa_backend(name: str, pipe, device: str, dtype) -> None:
    """Refuse (ConfigurationError) a forced SDPA backend the device cannot run for this model's
    denoiser (the option would do nothing there)."""
    if name == "auto":
        return
    runs = sdpa_backends_that_run(device, dtype, _head_dims(pipe))
    if name not in runs:
        raise ConfigurationError(
            f"BATCHRENDER_SDPA_BACKEND={name} cannot run on {device} in {str(dtype).replace('torch.', '')}; "
            f"allowed here: {', '.join(['auto', *runs])}")


def shape_buckets(spec: ModelSpec) -> int:
    """The image sizes the model's family produces from the aspect ratios at the model's base size."""
    from jobs.families import family, size_for
    from jobs.schemas import ASPECT_RATIOS

    fam = family(spec.family)
    return len({size_for(r, spec.base_size or fam.base_size, fam) for r in ASPECT_RATIOS.values()})


def compile_pipeline(pipe, *, denoiser: bool, vae: bool, mode: str, backend: str, recompile_limit: int) -> list[str]:
    """``torch.compile`` the denoiser (every one of ``unet``/``transformer`` present) and the VAE decoder,
    ``dynamic=False``: one graph per call shape. torch._dynamo's recompile limit is raised or lowered to
    ``recompile_limit``, so a shape beyond it runs eagerly (the compiled graphs still serve theirs)
    instead of compiling again and again. Returns what was compiled."""
    import torch
    import torch._dynamo

    targets = []
    if denoiser:
        targets += [(pipe, a) for a in ("unet", "transformer") if getattr(pipe, a, None) is not None]
    if vae and getattr(getattr(pipe, "vae", None), "decoder", None) is not None:
        targets.append((pipe.vae, "decoder"))
    if not targets:
        return []
    # ``recompile_limit`` since torch 2.7; ``cache_size_limit`` before (and an alias after).
    name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    setattr(torch._dynamo.config, name, recompile_limit)
    done = []
    for owner, attr in targets:
        try:
            compiled = torch.compile(getattr(owner, attr), mode=mode, backend=backend, dynamic=False, fullgraph=False)
        except torch._dynamo.exc.InvalidBackend:
            raise ConfigurationError(f"BATCHRENDER_COMPILE_BACKEND={backend!r} is not a torch.compile backend; "
                                     f"allowed: {', '.join(torch._dynamo.list_backends())}, eager") from None
        setattr(owner, attr, compiled)
        done.append("vae.decoder" if owner is not pipe else attr)
    return done


def _not_loaded(spec: ModelSpec) -> str:
    """What a tenant reads when a model does not load: not the directory or the library's text."""
    return (f"model {spec.name!r} could not be loaded by the worker, so no job of it can render until "
            "the operator fixes it (the cause is in the worker's log)")


class ModelCache:
    def __init__(self, capacity: int = 2, device: str | None = None, *, channels_last: bool = False,
                 compile_unet: bool = False, compile_vae: bool = False, compile_mode: str = "default",
                 compile_backend: str = "inductor", sdpa_backend: str = "auto", prompt_cache_size: int = 0,
                 vae_slicing: str = "auto", vae_tiling_above: int = 1536 * 1536,
                 free_memory: Callable[[str], int | None] = free_memory) -> None:
        self.capacity = max(1, capacity)
        self.device_override = device
        self.channels_last = channels_last
        self.compile_unet = compile_unet
        self.compile_vae = compile_vae
        self.compile_mode = compile_mode
        self.compile_backend = compile_backend
        self.sdpa_backend = sdpa_backend
        self.prompt_cache_size = prompt_cache_size
        self.vae_slicing = vae_slicing
        self.vae_tiling_above = vae_tiling_above
        self.free_memory = free_memory
        self._items: OrderedDict[str, Loaded] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings) -> "ModelCache":
        """The worker's cache (built at start-up). A forced SDPA backend that a CPU worker cannot run
        stops the worker here; on CUDA it is checked at model load (it depends on the model's dtype,
        and no CUDA context is made before a job needs one)."""
        if settings.sdpa_backend != "auto":
            device = pick_device(settings.device)
            if not device.startswith("cuda"):
                import torch

                runs = sdpa_backends_that_run(device, torch.float32, {64})
                if settings.sdpa_backend not in runs:
                    raise ConfigurationError(f"BATCHRENDER_SDPA_BACKEND={settings.sdpa_backend} cannot run on {device}; "
                                             f"allowed here: {', '.join(['auto', *runs])}")
        return cls(settings.model_cache_size, settings.device, channels_last=settings.channels_last,
                   compile_unet=settings.compile_unet, compile_vae=settings.compile_vae,
                   compile_mode=settings.compile_mode, compile_backend=settings.compile_backend,
                   sdpa_backend=settings.sdpa_backend, prompt_cache_size=settings.prompt_cache_size,
                   vae_slicing=settings.vae_slicing, vae_tiling_above=settings.vae_tiling_above_pixels)

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
            raise PermanentError(f"model {spec.name!r} could not be loaded from {source!r}: {e}").for_tenants(
                _not_loaded(spec)) from e
        loaded_family = family_of_pipeline(type(pipe).__name__)
        if loaded_family != spec.family:
            raise ConfigurationError(
                f"model {spec.name!r} is registered as family {spec.family!r} but {source!r} holds a "
                f"{type(pipe).__name__} ({loaded_family or 'unsupported family'}); register it again with "
                f"--family {loaded_family or 'sd15|sdxl|sd3|flux'}").for_tenants(_not_loaded(spec))
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
        self._apply_options(pipe, spec, device, dtype)
        load_s = time.perf_counter() - started
        log.info("loaded model %s on %s (%s) in %.2fs", spec.name, device, dtype, load_s)
        return Loaded(spec, pipe, device, load_s, n_bytes, self.vae_tiling_above, self.vae_slicing, self.free_memory)

    def _apply_options(self, pipe, spec: ModelSpec, device: str, dtype) -> None:
        """The opt-in render options, in the order they must happen (memory format before compiling)."""
        import torch

        # SDPA is diffusers' default attention processor on torch 2; a forced kernel is checked here,
        # at load, so a worker that cannot run it never takes a job.
        check_sdpa_backend(self.sdpa_backend, pipe, device, dtype)
        pipe._batchrender_sdpa_backend = None if self.sdpa_backend == "auto" else self.sdpa_backend
        # Channels-last helps convolutions on GPUs (the transformers of SD3/FLUX have few).
        if self.channels_last:
            for name in ("unet", "vae"):
                if getattr(pipe, name, None) is not None:
                    getattr(pipe, name).to(memory_format=torch.channels_last)
        if self.compile_unet or self.compile_vae:
            # torch counts recompiles per code object: models of one class share the limit.
            limit = shape_buckets(spec) * self.capacity
            done = compile_pipeline(pipe, denoiser=self.compile_unet, vae=self.compile_vae, mode=self.compile_mode,
                                    backend=self.compile_backend, recompile_limit=limit)
            log.info("model %s: torch.compile of %s (mode %s, backend %s, dynamic=False); recompile limit %d "
                     "(%d shape buckets x %d cached models): other shapes run eagerly", spec.name,
                     ", ".join(done) or "nothing", self.compile_mode, self.compile_backend, limit,
                     limit // self.capacity, self.capacity)
        if self.prompt_cache_size:
            from worker.prompts import PromptCache

            pipe._batchrender_prompt_cache = PromptCache(self.prompt_cache_size)

    def __contains__(self, name: str) -> bool:
        return name in self._items


def load_ip_adapter(pipe, spec: ModelSpec) -> None:
    """Load the model directory's IP-Adapter (jobs' ``references``). Its scale is set per call
    (worker/render.py): 0 for calls without references, which then render exactly as without it."""
    from jobs.registry import IP_ADAPTER_DIR, IP_ADAPTER_ENCODER, IP_ADAPTER_WEIGHTS, has_ip_adapter

    if not has_ip_adapter(spec.source):
        raise ConfigurationError(f"model {spec.name!r} is registered with an IP-Adapter but {spec.source!r} has no "
                                 f"{IP_ADAPTER_DIR}/{IP_ADAPTER_WEIGHTS} with {IP_ADAPTER_DIR}/{IP_ADAPTER_ENCODER}"
                                 ).for_tenants(_not_loaded(spec))
    try:
        pipe.load_ip_adapter(spec.source, subfolder=IP_ADAPTER_DIR, weight_name=IP_ADAPTER_WEIGHTS,
                             image_encoder_folder=IP_ADAPTER_ENCODER, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise PermanentError(f"model {spec.name!r}: its IP-Adapter could not be loaded: {e}").for_tenants(
            _not_loaded(spec)) from e
    pipe._batchrender_ip_adapter = True
