"""Stage 2 (optional): a local Hugging Face text-classification model scores the prompt.

Any ``AutoModelForSequenceClassification`` directory works. Its label names (``config.id2label``)
are mapped onto policy categories through each category's ``labels.text_classifier`` list and
compared with ``thresholds.text_classifier``. Multi-label models (``problem_type`` =
``multi_label_classification``) are scored with a sigmoid, others with a softmax.

torch and transformers are imported when the stage is built, never when this module is
imported, so the prompt-only chain stays torch-free.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from jobs.errors import ConfigurationError
from safety.labels import LabelMap
from safety.policy import Policy
from safety.verdict import Verdict

STAGE = "text_classifier"


class TextClassifierStage:
    """Scores prompts with a local sequence-classification model."""

    name = STAGE

    def __init__(self, model_dir: Path, policy: Policy, *, max_length: int = 512) -> None:
        try:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
        except ImportError as e:
            raise ConfigurationError(f"{STAGE} needs torch and transformers (the worker extra): {e}") from e
        try:
            self._tokenizer: Any = AutoTokenizer.from_pretrained(str(model_dir))
            self._model: Any = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
        except (OSError, ValueError) as e:
            raise ConfigurationError(f"{STAGE}: cannot load a text classifier from {model_dir}: {e}") from e
        self._torch = torch
        self._multi_label = self._model.config.problem_type == "multi_label_classification"
        self._labels = LabelMap(policy, STAGE, self._model.config.id2label, str(model_dir))
        self._max_length = max_length

    def check(self, prompt: str, negative_prompt: str | None = None, *, real_person_context: bool = False) -> list[Verdict]:
        """Verdicts for ``prompt``. The negative prompt is not scored: it cannot request content."""
        torch = self._torch
        inputs = self._tokenizer(prompt, return_tensors="pt", truncation=True, max_length=self._max_length)
        with torch.inference_mode():
            logits = self._model(**inputs).logits[0]
        probs = torch.sigmoid(logits) if self._multi_label else torch.softmax(logits, dim=-1)
        return self._labels.verdicts(probs.tolist())
