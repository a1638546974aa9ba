"""Real architectures, built from small transformers configs as a user's model folder holds
them: report and report --meta agree on every default, every fresh tensor of 1,000 values or
more is at its default, and check passes on the folder (save_pretrained's output)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from initscope.cli import app

transformers = pytest.importorskip("transformers")

SMALL = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    vocab_size=128,
)  # fmt: skip
SEQ2SEQ = dict(
    d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
    decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=128,
)  # fmt: skip
CLIP = dict(
    text_config=dict(SMALL),
    vision_config=dict(SMALL, image_size=32, patch_size=8),
    projection_dim=16,
)

# name: (config class, model class, config arguments)
ARCHITECTURES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "bert": ("BertConfig", "BertForSequenceClassification", SMALL),
    "roberta": ("RobertaConfig", "RobertaModel", SMALL),
    "distilbert": (
        "DistilBertConfig", "DistilBertModel",
        dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=128),
    ),
    "albert": ("AlbertConfig", "AlbertModel", dict(SMALL, embedding_size=16)),
    "electra": ("ElectraConfig", "ElectraModel", dict(SMALL, embedding_size=16)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=32, n_layer=2, n_head=2, vocab_size=128)),
    "llama": ("LlamaConfig", "LlamaForCausalLM", SMALL),
    "mistral": ("MistralConfig", "MistralForCausalLM", SMALL),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", SMALL),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(SMALL, head_dim=16)),
    "phi": ("PhiConfig", "PhiForCausalLM", SMALL),
    "opt": ("OPTConfig", "OPTForCausalLM", dict(SMALL, ffn_dim=64, word_embed_proj_dim=32)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", SMALL),
    "vit": ("ViTConfig", "ViTModel", dict(SMALL, image_size=32, patch_size=8)),
    "swin": (
        "SwinConfig", "SwinModel",
        dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
             window_size=4),
    ),
    "bart": ("BartConfig", "BartForConditionalGeneration", SEQ2SEQ),
    "clip": ("CLIPConfig", "CLIPModel", CLIP),
}  # fmt: skip


def _params(runner: CliRunner, *argv: str) -> dict[str, dict[str, Any]]:
    result = runner.invoke(app, ["report", *argv, "--format", "json", "-q"])
    assert result.exit_code == 0, result.output
    assert "bare state dict" not in result.stderr, result.stderr
    return {p["name"]: p for p in json.loads(result.stdout)["parameters"]}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("models")
    for name, (config_cls, model_cls, kwargs) in ARCHITECTURES.items():
        config = getattr(transformers, config_cls)(**kwargs)
        config.architectures = [model_cls]
        torch.manual_seed(0)
        getattr(transformers, model_cls)(config).save_pretrained(root / name)
        out[name] = root / name
    return out


@pytest.mark.slow  # 17 models built, reported twice and checked: about 12 s
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_a_real_architecture_is_right_out_of_the_box(
    runner: CliRunner, folders: dict[str, Path], name: str
) -> None:
    folder = str(folders[name])
    cpu = _params(runner, folder)
    meta = _params(runner, folder, "--meta")
    assert cpu.keys() == meta.keys()
    for n, p in cpu.items():
        assert p["default"] is not None, n
        assert p["default"]["family"] != "custom", (n, p["default"])
        assert p["default"]["label"] == meta[n]["default"]["label"], n
        if p["numel"] >= 1000:
            assert p["matches_default"] is True, (n, p["fit"], p["default"]["label"])
    result = runner.invoke(app, ["check", folder, "-q"])
    assert result.exit_code == 0, result.output
