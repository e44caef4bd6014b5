"""Stage 4 (optional): local models score rendered images before they are stored or signed.

* ``ImageClassifierStage``: any ``AutoModelForImageClassification`` directory (with its image
  processor config); labels map onto categories via ``labels.output_classifier``.
* ``SafetyCheckerStage``: diffusers' ``StableDiffusionSafetyChecker`` plus the
  ``CLIPImageProcessor`` saved next to it. It answers yes/no, so a "yes" is a score of 1.0 for
  every category that lists the label ``nsfw`` under ``labels.safety_checker``.

The perceptual-hash blocklist lives in ``safety.blocklist``. torch, transformers and diffusers
are imported when a stage is built, never when this module is imported.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from jobs.errors import ConfigurationError
from safety.labels import LabelMap
from safety.policy import Policy
from safety.verdict import Action, Verdict

CLASSIFIER_STAGE = "output_classifier"
SAFETY_CHECKER_STAGE = "safety_checker"


class ImageClassifierStage:
    """Scores output images with a local image-classification model."""

    name = CLASSIFIER_STAGE

    def __init__(self, model_dir: Path, policy: Policy) -> None:
        try:
            import torch
            from transformers import AutoImageProcessor, AutoModelForImageClassification
        except ImportError as e:
            raise ConfigurationError(f"{self.name} needs torch and transformers (the worker extra): {e}") from e
        try:
            self._processor: Any = AutoImageProcessor.from_pretrained(str(model_dir))
            self._model: Any = AutoModelForImageClassification.from_pretrained(str(model_dir)).eval()
        except (OSError, ValueError) as e:
            raise ConfigurationError(f"{self.name}: cannot load an image classifier from {model_dir}: {e}") from e
        self._torch = torch
        self._multi_label = self._model.config.problem_type == "multi_label_classification"
        self._labels = LabelMap(policy, self.name, self._model.config.id2label, str(model_dir))

    def check(self, image: Image.Image) -> list[Verdict]:
        torch = self._torch
        inputs = self._processor(images=image.convert("RGB"), return_tensors="pt")
        with torch.inference_mode():
            logits = self._model(**inputs).logits[0]
        probs = torch.sigmoid(logits) if self._multi_label else torch.softmax(logits, dim=-1)
        return self._labels.verdicts(probs.tolist())


class SafetyCheckerStage:
    """Runs diffusers' Stable Diffusion safety checker on output images."""

    name = SAFETY_CHECKER_STAGE

    def __init__(self, checker_dir: Path, policy: Policy) -> None:
        try:
            import torch
            from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
            from transformers import CLIPImageProcessor
        except ImportError as e:
            raise ConfigurationError(f"{self.name} needs torch, transformers and diffusers: {e}") from e
        self._categories = [c for c in policy.categories if "nsfw" in (s.casefold() for s in c.labels.get(self.name, ()))]
        if not self._categories:
            raise ConfigurationError(
                f"{self.name}: no category lists 'nsfw' under labels.safety_checker in {policy.source}"
            )
        try:
            self._processor: Any = CLIPImageProcessor.from_pretrained(str(checker_dir))
            self._checker: Any = StableDiffusionSafetyChecker.from_pretrained(str(checker_dir)).eval()
        except (OSError, ValueError) as e:
            raise ConfigurationError(f"{self.name}: cannot load a safety checker from {checker_dir}: {e}") from e
        self._torch = torch
        self._version = policy.version

    def check(self, image: Image.Image) -> list[Verdict]:
        rgb = image.convert("RGB")
        clip_input = self._processor(images=rgb, return_tensors="pt").pixel_values
        pixels = np.asarray(rgb, dtype=np.float32)[None] / 255.0
        with self._torch.inference_mode():
            _, has_nsfw = self._checker(images=pixels, clip_input=clip_input)
        if not has_nsfw[0]:
            return [Verdict(self.name, "none", 0.0, Action.ALLOW, self._version)]
        return [Verdict(self.name, c.id, 1.0, c.action, self._version, c.severity, "nsfw_concept") for c in self._categories]
