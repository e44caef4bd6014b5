"""Output image stages: a tiny random ViT classifier and a tiny diffusers safety checker."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from safety.policy import load_policy
from safety.verdict import Action

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def tiny_vit(tmp_path: Path, winner: int) -> Path:
    labels = {0: "normal", 1: "nsfw"}
    config = transformers.ViTConfig(image_size=32, patch_size=16, num_channels=3, hidden_size=16,
                                    num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                    id2label=labels, label2id={v: k for k, v in labels.items()})
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([8.0 if i == winner else 0.0 for i in range(2)]))
    out = tmp_path / "vit"
    model.save_pretrained(out)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def tiny_safety_checker(tmp_path: Path, always_nsfw: bool) -> Path:
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    config = transformers.CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "vocab_size": 100},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
        projection_dim=8,
    )
    torch.manual_seed(0)
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        # a concept fires when cosine similarity exceeds its weight: -2 always fires, 2 never does
        checker.concept_embeds_weights.fill_(-2.0 if always_nsfw else 2.0)
        checker.special_care_embeds_weights.fill_(2.0)
    out = tmp_path / "checker"
    checker.save_pretrained(out)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def test_image_classifier_label_maps_to_sexual_explicit_block(tmp_path: Path):
    from safety.output_images import ImageClassifierStage

    stage = ImageClassifierStage(tiny_vit(tmp_path, winner=1), load_policy())
    (v,) = stage.check(Image.new("RGB", (64, 48), "gray"))
    assert (v.stage, v.category, v.action) == ("output_classifier", "sexual_explicit", Action.BLOCK)


def test_image_classifier_allows_below_threshold(tmp_path: Path):
    from safety.output_images import ImageClassifierStage

    (v,) = ImageClassifierStage(tiny_vit(tmp_path, winner=0), load_policy()).check(Image.new("RGB", (40, 40)))
    assert v.action is Action.ALLOW


@pytest.mark.parametrize(("always_nsfw", "expected"), [(True, Action.BLOCK), (False, Action.ALLOW)])
def test_safety_checker_verdict_follows_its_concept_scores(tmp_path: Path, always_nsfw, expected):
    from safety.output_images import SafetyCheckerStage

    stage = SafetyCheckerStage(tiny_safety_checker(tmp_path, always_nsfw), load_policy())
    verdicts = stage.check(Image.new("RGB", (64, 64), "white"))
    assert verdicts[0].action is expected
    if always_nsfw:
        assert verdicts[0].category == "sexual_explicit"
