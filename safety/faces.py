"""Face detection for the real-person signal: OpenCV's Haar cascade, which works offline.

A face in a reference image switches the prompt rules to their stricter real-person mode. The
detector errs towards finding faces (drawings and statues count too): a false face only makes
moderation stricter, a missed one makes it laxer.

Needs ``opencv-python-headless`` < 5: OpenCV 5 wheels no longer ship ``CascadeClassifier`` or the
cascade XML files. A missing or broken OpenCV is reported when the detector is constructed.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from PIL import Image

from jobs.errors import ConfigurationError

#: Images are scaled down to this longest side first: Haar cost grows with pixels, and faces
#: big enough to matter for a deepfake are still dozens of pixels wide at this size.
_MAX_SIDE = 640


class FaceDetector(Protocol):
    """Anything that counts faces in an image."""

    def count(self, image: Image.Image) -> int: ...


class HaarFaceDetector:
    """Counts frontal faces with ``haarcascade_frontalface_default.xml`` from OpenCV's wheel."""

    def __init__(self, cascade: str = "haarcascade_frontalface_default.xml", min_neighbors: int = 5) -> None:
        try:
            import cv2
        except ImportError as e:
            raise ConfigurationError(
                "face detection needs opencv-python-headless (pip install 'opencv-python-headless<5'); "
                "or build the chain with detect_faces=False to run without the real-person signal"
            ) from e
        if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
            raise ConfigurationError(
                f"OpenCV {cv2.__version__} has no Haar cascades (OpenCV 5 dropped them); "
                "install 'opencv-python-headless<5'"
            )
        self._cv2: Any = cv2
        self._classifier = cv2.CascadeClassifier(cv2.data.haarcascades + cascade)
        if self._classifier.empty():
            raise ConfigurationError(f"could not load Haar cascade {cascade} from {cv2.data.haarcascades}")
        self._min_neighbors = min_neighbors

    def count(self, image: Image.Image) -> int:
        """Number of faces found in ``image``."""
        gray = image.convert("L")
        scale = _MAX_SIDE / max(gray.size)
        if scale < 1:
            gray = gray.resize((max(1, round(gray.width * scale)), max(1, round(gray.height * scale))))
        arr = self._cv2.equalizeHist(np.asarray(gray, dtype=np.uint8))
        side = max(24, min(arr.shape) // 20)
        faces = self._classifier.detectMultiScale(
            arr, scaleFactor=1.1, minNeighbors=self._min_neighbors, minSize=(side, side)
        )
        return len(faces)
