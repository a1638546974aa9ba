"""Model folders: a transformers config.json with its safetensors, as save_pretrained writes
them. The architecture is built from the config, so every tensor gets its traced default."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from initscope.cli import app
from tests.fixtures.hf_models import bert_config

transformers = pytest.importorskip("transformers")


def _folder(tmp_path: Path, name: str, config: Any, cls: Any, edit: Any = None) -> Path:
    torch.manual_seed(0)
    model = cls(config)
    if edit is not None:
        with torch.no_grad():
            edit(model)
    path = tmp_path / name
    model.save_pretrained(path)
    return path


def _bert(tmp_path: Path, edit: Any = None) -> Path:
    config = bert_config(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=3,
        architectures=["BertForSequenceClassification"],
    )
    return _folder(tmp_path, "bert", config, transformers.BertForSequenceClassification, edit)


def _report(runner: CliRunner, *argv: str) -> dict[str, Any]:
    result = runner.invoke(app, ["report", *argv, "--format", "json", "-q"])
    assert result.exit_code == 0, result.output
    return {p["name"]: p for p in json.loads(result.stdout)["parameters"]}


def test_a_model_folder_gives_every_tensor_its_default(runner: CliRunner, tmp_path: Path) -> None:
    def fine_tune(model: Any) -> None:  # the encoder trained, the new head never touched
        model.bert.encoder.layer[0].attention.self.query.weight.normal_(0, 0.2)

    folder = _bert(tmp_path, fine_tune)
    params = _report(runner, str(folder))
    assert all(p["default"] is not None for p in params.values())
    query = params["bert.encoder.layer.0.attention.self.query.weight"]
    assert query["matches_default"] is False
    head = params["classifier.weight"]
    assert head["default"]["label"] == "N(0, 0.02)"
    assert head["matches_default"] is True  # still at its init: never trained
    # on meta: the same defaults, no weights allocated for the model
    meta = _report(runner, str(folder), "--meta")
    assert {n: p["default"]["label"] for n, p in meta.items()} == {
        n: p["default"]["label"] for n, p in params.items()
    }


@pytest.mark.parametrize(
    ("name", "config", "cls"),
    [
        (
            "vit",
            lambda: transformers.ViTConfig(
                image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                num_attention_heads=2, intermediate_size=64,
            ),
            lambda: transformers.ViTModel,
        ),
        (
            "gpt_neox",
            lambda: transformers.GPTNeoXConfig(
                vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64,
            ),
            lambda: transformers.GPTNeoXForCausalLM,
        ),
    ],
)  # fmt: skip
def test_keys_transformers_renames_at_load_are_matched(
    runner: CliRunner, tmp_path: Path, name: str, config: Any, cls: Any
) -> None:
    # ViT saves attention.attention.query (the model has q_proj), GPT-NeoX embed_out (the
    # model has lm_head): transformers' own conversion mapping renames them.
    folder = _folder(tmp_path, name, config(), cls())
    result = runner.invoke(app, ["check", str(folder), "-q"])
    assert result.exit_code == 0, result.output
    assert "bare state dict" not in result.stderr
    params = _report(runner, str(folder))
    assert all(p["default"] is not None for p in params.values())
    big = [p for p in params.values() if p["numel"] >= 1000]
    assert big and all(p["matches_default"] for p in big)


def test_a_sharded_model_folder_is_built_from_its_config(runner: CliRunner, tmp_path: Path) -> None:
    # save_pretrained with max_shard_size writes an index and several files: the checkpoint
    # is read through the index, the model from the folder's config.json beside it.
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64,
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path / "sharded"
    transformers.BertModel(config).save_pretrained(folder, max_shard_size="20KB")
    assert len(list(folder.glob("*.safetensors"))) > 2
    result = runner.invoke(app, ["report", str(folder), "-q"])
    assert result.exit_code == 0, result.output
    assert "bare state dict" not in result.stderr
    params = _report(runner, str(folder))
    assert all(p["matches_default"] is True for p in params.values())


def test_code_a_config_points_to_never_runs(runner: CliRunner, tmp_path: Path) -> None:
    folder = _bert(tmp_path)
    marker = tmp_path / "ran"
    (folder / "evil_model.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil_model.Evil"}
    (folder / "config.json").write_text(json.dumps(config))
    result = runner.invoke(app, ["report", str(folder), "-q"])
    assert result.exit_code == 0, result.output
    assert "auto_map" in result.stderr and "--unsafe-load" in result.stderr
    assert "bare state dict" in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    "config",
    [
        b"{not json",
        b"[1, 2]",
        b'{"model_type": "no-such-model"}',
        b'{"model_type": "bert", "architectures": ["__import__"]}',
        b'{"model_type": "bert", "hidden_size": 1000000, "num_hidden_layers": 100000}',
        b" " * (4 * 2**20 + 10),
    ],
)
def test_a_hostile_config_reads_the_folder_as_a_bare_state_dict(
    runner: CliRunner, tmp_path: Path, config: bytes
) -> None:
    folder = _bert(tmp_path)
    (folder / "config.json").write_bytes(config)
    result = runner.invoke(app, ["report", str(folder), "-q"])
    assert result.exit_code == 0, result.output
    assert "is a model folder, but" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_config_does_not_hang(runner: CliRunner, tmp_path: Path) -> None:
    folder = _bert(tmp_path)
    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")
    result = runner.invoke(app, ["report", str(folder), "-q"])
    assert result.exit_code == 0, result.output  # not a model folder: a bare state dict


def _adapter(tmp_path: Path, config: bytes) -> Path:
    """A PEFT LoRA adapter folder as peft's save_pretrained writes one (keys without the
    adapter name; lora_B zeros), with ``config`` as its adapter_config.json."""
    from safetensors.torch import save_file

    folder = tmp_path / "adapter"
    folder.mkdir()
    torch.manual_seed(0)
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file(
        {
            f"{prefix}.lora_A.weight": torch.empty(16, 64).uniform_(-0.125, 0.125),
            f"{prefix}.lora_B.weight": torch.zeros(64, 16),
        },
        str(folder / "adapter_model.safetensors"),
    )
    (folder / "adapter_config.json").write_bytes(config)
    return folder


@pytest.mark.parametrize(
    ("config", "base"),
    [
        (
            b'{"peft_type": "LORA", "base_model_name_or_path": "meta-llama/Llama-2-7b-hf"}',
            "meta-llama/Llama-2-7b-hf",
        ),
        (b'{"base_model_name_or_path": "evil\\u001b[2Jname"}', "evil\\x1b[2Jname"),
        (b"{not json", "a base model it does not name"),
        (b'{"base_model_name_or_path": ["not", "a", "name"]}', "a base model it does not name"),
        (b" " * (4 * 2**20 + 10), "a base model it does not name"),
    ],
)
def test_a_peft_adapter_folder_is_read_bare_and_says_why(
    runner: CliRunner, tmp_path: Path, config: bytes, base: str
) -> None:
    folder = _adapter(tmp_path, config)
    result = runner.invoke(app, ["report", str(folder), "-q"])
    assert result.exit_code == 0, result.output
    assert f"is a PEFT adapter for {base}, and initscope downloads no base model" in result.stderr
    assert "\x1b" not in result.output
    result = runner.invoke(app, ["check", str(folder), "-q"])
    assert result.exit_code == 0, result.output  # lora_B's zeros are zeros by design


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_adapter_config_does_not_hang(runner: CliRunner, tmp_path: Path) -> None:
    folder = _adapter(tmp_path, b"{}")
    (folder / "adapter_config.json").unlink()
    os.mkfifo(folder / "adapter_config.json")
    result = runner.invoke(app, ["report", str(folder), "-q"])
    assert result.exit_code == 0, result.output  # not an adapter folder: a bare state dict
    assert "PEFT adapter" not in result.stderr


class _Net(torch.nn.Module):
    def __init__(self, num_classes: int = 1000, width: int = 8) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, width, 3)
        self.head = torch.nn.Linear(width, num_classes)


def _fake_timm(monkeypatch: pytest.MonkeyPatch, built: list[dict[str, Any]]) -> None:
    """A stand-in for timm (which needs a torchvision built for this torch): it knows one
    model name and records what it was asked to build."""
    import types

    fake = types.ModuleType("timm")
    fake.__version__ = "0.0-test"  # type: ignore[attr-defined]
    fake.is_model = lambda name: name == "tiny_net"  # type: ignore[attr-defined]

    def create_model(name: str, pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
        built.append({"name": name, "pretrained": pretrained, **kwargs})
        return _Net(**kwargs)

    fake.create_model = create_model  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "timm", fake)


def _timm_folder(tmp_path: Path, config: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    folder = tmp_path / "timm-model"
    folder.mkdir()
    torch.manual_seed(0)
    save_file(_Net(num_classes=3, width=16).state_dict(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_timm_folder_is_built_by_timm_with_its_config(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The config as timm's save_for_hf writes it (timm/models/_hub.py): the architecture,
    # num_classes at the top, the constructor's arguments in model_args.
    built: list[dict[str, Any]] = []
    _fake_timm(monkeypatch, built)
    folder = _timm_folder(
        tmp_path,
        {"architecture": "tiny_net", "num_classes": 3, "model_args": {"width": 16},
         "pretrained_cfg": {"tag": "x", "input_size": [3, 224, 224]}},
    )  # fmt: skip
    params = _report(runner, str(folder))
    # built on meta first (within the limits a folder's model is held to), then for real
    assert built and all(
        b == {"name": "tiny_net", "pretrained": False, "width": 16, "num_classes": 3} for b in built
    )
    assert params["head.weight"]["default"]["label"] == "U(±0.25)"  # kaiming_uniform(a=√5), 16
    assert all(p["default"] is not None for p in params.values())
    assert all(p["matches_default"] is True for p in params.values() if p["numel"] >= 30)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"architecture": "../../evil"}, "is not a timm model name"),
        ({"architecture": "os.system"}, "which this timm (0.0-test) does not know"),
        ({"architecture": "tiny_net", "model_args": [1]}, "model_args is not an object"),
    ],
)
def test_a_hostile_timm_config_reads_the_folder_bare(
    runner: CliRunner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    config: dict[str, Any],
    message: str,
) -> None:
    built: list[dict[str, Any]] = []
    _fake_timm(monkeypatch, built)
    result = runner.invoke(app, ["report", str(_timm_folder(tmp_path, config)), "-q"])
    assert result.exit_code == 0, result.output
    assert message in result.stderr and "bare state dict" in result.stderr, result.stderr
    assert built == []


def test_a_timm_folder_without_timm_says_how_to_get_it(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "timm", None)  # import timm fails
    folder = _timm_folder(tmp_path, {"architecture": "tiny_net"})
    result = runner.invoke(app, ["report", str(folder), "-q"])
    assert result.exit_code == 0, result.output
    assert "is a timm model folder, and timm does not import here" in result.stderr
    assert "pip install timm with a torchvision built for this torch" in result.stderr
