"""Hugging Face ids as TARGET: read from the local cache (HF_HUB_CACHE, HF_HOME, ~/.cache) as
the model folder its snapshot is, never downloaded; a local path always wins."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from initscope.cli import app
from tests.fixtures.hub import COMMIT, cache_repo, repo_folder, tiny_bert_folder

pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection fails the test: initscope must never reach the network, whatever
    HF_HUB_OFFLINE says (it is unset here)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"initscope opened a connection: {args}")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    hub = tmp_path / "hf" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.chdir(tmp_path)
    return hub


def _report(runner: CliRunner, *argv: str) -> dict[str, Any]:
    result = runner.invoke(app, ["report", *argv, "--format", "json", "-q"])
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _params(report: dict[str, Any]) -> dict[str, Any]:
    return {p["name"]: p for p in report["parameters"]}


@pytest.mark.parametrize("shard", [False, True], ids=["one-file", "sharded"])
def test_a_cached_id_is_read_as_its_model_folder(
    runner: CliRunner, tmp_path: Path, cache: Path, shard: bool
) -> None:
    saved = tiny_bert_folder(tmp_path / "saved", shard=shard)
    cache_repo(cache, "tiny-org/bert-mini", saved)
    report = _report(runner, "tiny-org/bert-mini")
    assert report["target"] == "tiny-org/bert-mini"
    params = _params(report)
    assert len(params) == 39
    # Built from the snapshot's config.json: every tensor has its traced default, and a
    # freshly saved model is at it everywhere.
    assert all(p["default"] is not None for p in params.values())
    assert all(p["matches_default"] is True for p in params.values())
    assert params["embeddings.word_embeddings.weight"]["default"]["label"] == "N(0, 0.02)"
    check = runner.invoke(app, ["check", "tiny-org/bert-mini", "-q"])
    assert check.exit_code == 0, check.output
    assert "39 parameters checked: all checks pass" in check.stdout


def test_the_cache_is_found_as_huggingface_hub_finds_it(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No HF_HUB_CACHE: $HF_HOME/hub; neither: $XDG_CACHE_HOME/huggingface/hub.
    saved = tiny_bert_folder(tmp_path / "saved")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    cache_repo(tmp_path / "home" / "hub", "bert-mini", saved)  # an id without organization
    assert len(_params(_report(runner, "bert-mini"))) == 39
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cache_repo(tmp_path / "xdg" / "huggingface" / "hub", "org/bert-mini", saved)
    assert len(_params(_report(runner, "org/bert-mini"))) == 39


def test_revision_picks_a_branch_or_a_commit(
    runner: CliRunner, tmp_path: Path, cache: Path
) -> None:
    main = tiny_bert_folder(tmp_path / "main")
    tuned = tiny_bert_folder(tmp_path / "tuned", head=0.5)
    cache_repo(cache, "org/bert", main)
    other = "f" * 40
    cache_repo(cache, "org/bert", tuned, commit=other, ref="v1")

    def pooler(*argv: str) -> Any:
        return _params(_report(runner, "org/bert", *argv))["pooler.dense.weight"]

    assert pooler()["matches_default"] is True
    assert pooler("--revision", "v1")["stats"]["mean"] == 0.5
    assert pooler("--revision", other)["stats"]["mean"] == 0.5
    assert pooler("--revision", COMMIT)["matches_default"] is True
    result = runner.invoke(app, ["report", "org/bert", "--revision", "v2"])
    assert result.exit_code == 2
    assert (
        "the Hugging Face cache holds org/bert but not its revision 'v2' (no refs/v2); pass "
        f"--revision with a cached commit ({COMMIT}, {other}), or download it: "
        "hf download org/bert --revision v2"
    ) in result.stderr
    # --revision belongs to an id: given for anything else, it is a usage error.
    result = runner.invoke(app, ["report", "torch.nn:Linear", "--revision", "v1"])
    assert result.exit_code == 2
    assert "--revision given, but TARGET 'torch.nn:Linear' is not a Hugging Face id" in (
        result.stderr
    )


def test_a_local_path_wins_over_a_cached_id(runner: CliRunner, tmp_path: Path, cache: Path) -> None:
    cache_repo(cache, "org/bert", tiny_bert_folder(tmp_path / "cached"))
    tiny_bert_folder(tmp_path / "org" / "bert", head=0.5)  # ./org/bert, from the working folder
    params = _params(_report(runner, "org/bert"))
    assert params["pooler.dense.weight"]["stats"]["mean"] == 0.5


def test_an_id_not_in_the_cache_keeps_its_error_with_a_hint(runner: CliRunner, cache: Path) -> None:
    hint = "not in the local Hugging Face cache (initscope never downloads; run `hf download"
    result = runner.invoke(app, ["report", "google/vit-base-patch16-224"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "initscope: error: no such file: google/vit-base-patch16-224; check the path; "
        f"google/vit-base-patch16-224 is {hint} google/vit-base-patch16-224` first)"
    ]
    result = runner.invoke(app, ["check", "bert-base-uncased"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "initscope: error: 'bert-base-uncased' is not a model reference; write "
        "pkg.module:Class (e.g. torch.nn:Linear), or give a .yaml spec or a checkpoint; "
        f"bert-base-uncased is {hint} bert-base-uncased` first)"
    ]
    # A file name or a module reference is not taken for an id: no hint about the cache.
    for target in ("ckpt/missing.safetensors", "nn.Nope"):
        result = runner.invoke(app, ["report", target])
        assert result.exit_code == 2
        assert "Hugging Face" not in result.stderr


def test_apply_reads_a_cached_id_and_never_writes_into_the_cache(
    runner: CliRunner, tmp_path: Path, cache: Path
) -> None:
    snapshot = cache_repo(cache, "org/bert", tiny_bert_folder(tmp_path / "saved"))
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - type: Linear\n    param: bias\n    init: zeros\n")
    out = tmp_path / "out.safetensors"
    result = runner.invoke(app, ["apply", "--rules", str(rules), "org/bert", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file()
    before = {p.name: p.read_bytes() for p in (repo_folder(cache, "org/bert") / "blobs").iterdir()}
    inside = str(snapshot / "model.safetensors")  # a link to the cache's blob
    for command in (
        ["report", "org/bert"],
        ["check", "org/bert"],
        ["apply", "--rules", str(rules), "org/bert", "--force"],
    ):
        result = runner.invoke(app, [*command, "-o", inside, "-q"])
        assert result.exit_code == 2, result.output
        assert f"--output {inside} is one of the files the command reads" in result.stderr
    after = {p.name: p.read_bytes() for p in (repo_folder(cache, "org/bert") / "blobs").iterdir()}
    assert after == before


def test_diff_compares_a_cached_id_with_a_folder(
    runner: CliRunner, tmp_path: Path, cache: Path
) -> None:
    cache_repo(cache, "org/bert", tiny_bert_folder(tmp_path / "main"))
    result = runner.invoke(app, ["diff", "org/bert", "org/bert", "-f", "json", "-q"])
    assert result.exit_code == 0, result.output
    tuned = tiny_bert_folder(tmp_path / "tuned", head=0.5)
    result = runner.invoke(app, ["diff", "org/bert", str(tuned), "-f", "json", "-q"])
    assert result.exit_code == 0, result.output
    params = json.loads(result.stdout)["parameters"]
    changed = [p["name"] for p in params if p["status"] != "unchanged"]
    assert changed == ["pooler.dense.weight"]
