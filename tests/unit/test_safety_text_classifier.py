"""Text classifier stage with a tiny random BERT saved to disk and loaded by the real path."""
from __future__ import annotations

from pathlib import Path

import pytest

from jobs.errors import ConfigurationError
from safety.policy import load_policy
from safety.verdict import Action

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LABELS = {0: "safe", 1: "sexual", 2: "violence"}


def tiny_bert(tmp_path: Path, winner: int, labels: dict[int, str] = LABELS) -> Path:
    """Save a 1-layer BERT whose classifier always prefers label ``winner``, plus its tokenizer."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "car", "product", "shot"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    tokenizer = transformers.BertTokenizer(str(tmp_path / "vocab.txt"))
    config = transformers.BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                                     id2label=labels, label2id={v: k for k, v in labels.items()})
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([8.0 if i == winner else 0.0 for i in range(len(labels))]))
    out = tmp_path / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_label_above_threshold_becomes_category_verdict(tmp_path: Path):
    from safety.text_classifier import TextClassifierStage

    stage = TextClassifierStage(tiny_bert(tmp_path, winner=2), load_policy())
    verdicts = stage.check("a red car product shot")
    assert [(v.category, v.action) for v in verdicts] == [("graphic_violence", Action.BLOCK)]
    assert verdicts[0].score > 0.99 and verdicts[0].stage == "text_classifier"


def test_unmapped_winning_label_allows(tmp_path: Path):
    from safety.text_classifier import TextClassifierStage

    (v,) = TextClassifierStage(tiny_bert(tmp_path, winner=0), load_policy()).check("a red car")
    assert v.action is Action.ALLOW


def test_model_whose_labels_map_to_no_category_fails_at_construction(tmp_path: Path):
    from safety.text_classifier import TextClassifierStage

    with pytest.raises(ConfigurationError, match="none of the labels"):
        TextClassifierStage(tiny_bert(tmp_path, 0, {0: "LABEL_0", 1: "LABEL_1"}), load_policy())


def test_missing_model_dir_fails_at_construction(tmp_path: Path):
    from safety.text_classifier import TextClassifierStage

    with pytest.raises(ConfigurationError, match="cannot load a text classifier"):
        TextClassifierStage(tmp_path / "nope", load_policy())
