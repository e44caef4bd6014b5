"""Stage 3: reference images for image-to-image, refused or accepted before any GPU time.

Order matters: byte size, then the format and pixel count from the header alone (PIL opens
lazily), and only then the full decode, in a child process under a CPU and memory budget
(``safety.decode``), within what the request has left of its own budget (the images of one
request share one: ``safety.decode.request_budget``). A decompression bomb (a small file that
claims a huge canvas) is refused before a single row is decoded; a scan bomb (a small file that
takes minutes to decode) when it has used its CPU budget. The accepted image is returned already
decoded so the worker does not parse the bytes a second time.

A face in the image is a *signal*, not a verdict: it turns on the stricter real-person prompt
rules (``real_person_context``).
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from safety.decode import current_budget, decode_bounded
from safety.faces import FaceDetector
from safety.verdict import INVALID_IMAGE, Action, Verdict

STAGE = "input_images"
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")
#: Reference images larger than this are refused before PIL sees them (no setting exists).
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
#: CPU seconds one reference image may take to decode (a legitimate 4 MP image takes ~0.1 s).
DEFAULT_DECODE_CPU_S = 1.0


@dataclass(frozen=True, slots=True)
class InputImageResult:
    """What the stage found: its verdicts, the decoded RGB image when accepted, the face count."""

    verdicts: tuple[Verdict, ...]
    image: Image.Image | None
    faces: int | None  # None: the image was refused, or no detector is configured


class InputImageStage:
    """Validates a reference image and counts faces in it."""

    name = STAGE

    def __init__(self, policy_version: str, *, max_pixels: int, max_bytes: int = DEFAULT_MAX_BYTES,
                 face_detector: FaceDetector | None = None, decode_cpu_s: float = DEFAULT_DECODE_CPU_S) -> None:
        self.policy_version = policy_version
        self.decode_cpu_s = decode_cpu_s
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.face_detector = face_detector

    def _refuse(self, rule: str) -> InputImageResult:
        # Severity 0: a malformed image is bad input, not a policy violation to re-roll around.
        v = Verdict(STAGE, INVALID_IMAGE, 1.0, Action.BLOCK, self.policy_version, 0, rule)
        return InputImageResult((v,), None, None)

    def check(self, data: bytes) -> InputImageResult:
        """Check ``data`` (the uploaded bytes). Never raises for bad images: it refuses them."""
        if len(data) > self.max_bytes:
            return self._refuse(f"too_many_bytes:{len(data)}>{self.max_bytes}")
        try:
            with warnings.catch_warnings():
                # PIL warns between MAX_IMAGE_PIXELS and twice that, and raises above; both mean
                # "bomb". Turn the warning into an error here regardless of global filters.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
                width, height = img.size  # header only: nothing is decoded yet
                if width * height > self.max_pixels:
                    return self._refuse(f"too_many_pixels:{width}x{height}>{self.max_pixels}")
                budget = current_budget()  # the images of one request share a budget (safety/decode.py)
                over = budget.charge_pixels(data, width * height) if budget is not None else None
                if over:
                    return self._refuse(over)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            return self._refuse("decompression_bomb")
        except UnidentifiedImageError:
            return self._refuse(f"format_not_allowed:expected {'/'.join(ALLOWED_FORMATS)}")
        except (OSError, ValueError, SyntaxError, EOFError):
            # Truncated or corrupt data: PIL reports it with any of these depending on the codec.
            return self._refuse("corrupt_image")
        # The decode itself: in a child process under a CPU and memory budget (safety/decode.py).
        decoded = decode_bounded(data, max_pixels=self.max_pixels, formats=ALLOWED_FORMATS, cpu_s=self.decode_cpu_s)
        if decoded.image is None:
            return self._refuse(decoded.refused or "corrupt_image")
        rgb = decoded.image
        faces = self.face_detector.count(rgb) if self.face_detector is not None else None
        verdict = Verdict(STAGE, "real_person" if faces else "none", float(bool(faces)), Action.ALLOW,
                          self.policy_version, 0, f"faces:{faces}" if faces is not None else "faces:not_checked")
        return InputImageResult((verdict,), rgb, faces)
