"""The local Hugging Face cache is data on disk: a ref must hold a commit hash, a snapshot's
links may lead only into their own repo's blobs, a FIFO is never opened, a huge config.json is
not read, and a TARGET spelled with a path in it is never looked up in the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from initscope.cli import app
from initscope.io.hub import is_hub_id, snapshot_folder
from initscope.io.saving import write_safetensors
from initscope.io.targets import is_hub_target, locate
from tests.fixtures.hub import COMMIT, cache_repo, repo_folder, tiny_bert_folder

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    hub = tmp_path / "hf" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return hub


def _errors(runner: CliRunner, *argv: str) -> str:
    result = runner.invoke(app, list(argv))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _relink(link: Path, to: Path | str) -> None:
    link.unlink()
    os.symlink(to, link)


@pytest.mark.parametrize("where", ["outside-the-cache", "another-repos-blobs", "the-repo-folder"])
def test_a_snapshot_link_leaving_its_repos_blobs_is_refused(
    runner: CliRunner, tmp_path: Path, cache: Path, where: str
) -> None:
    saved = tiny_bert_folder(tmp_path / "saved")
    snapshot = cache_repo(cache, "org/bert", saved)
    other = cache_repo(cache, "org/other", saved)
    blob = (other / "model.safetensors").resolve()
    target = {
        "outside-the-cache": saved / "model.safetensors",
        "another-repos-blobs": blob,
        "the-repo-folder": repo_folder(cache, "org/bert") / "stray.safetensors",
    }[where]
    if where == "the-repo-folder":
        target.write_bytes(blob.read_bytes())
    _relink(snapshot / "model.safetensors", os.path.relpath(target, snapshot))
    error = _errors(runner, "report", "org/bert")
    assert f"{snapshot / 'model.safetensors'} links to " in error
    assert "outside the cache's blobs folder of org/bert" in error
    assert "hf download org/bert --force-download" in error


@pytest.mark.parametrize(
    "content", ["../../x", "../../../saved", "", "main", COMMIT + "\n" + COMMIT, "0" * 5000]
)
def test_a_ref_that_is_not_a_commit_hash_is_refused(
    runner: CliRunner, tmp_path: Path, cache: Path, content: str
) -> None:
    cache_repo(cache, "org/bert", tiny_bert_folder(tmp_path / "saved"))
    (repo_folder(cache, "org/bert") / "refs" / "main").write_text(content)
    error = _errors(runner, "report", "org/bert")
    assert "the cache's refs/main of org/bert does not hold a commit hash" in error


@pytest.mark.parametrize(
    "revision", ["../../x", "../refs/main", "/etc/passwd", "a/../../b", ".", "v1;rm", "a\\b"]
)
def test_a_revision_is_a_name_never_a_path(
    runner: CliRunner, tmp_path: Path, cache: Path, revision: str
) -> None:
    cache_repo(cache, "org/bert", tiny_bert_folder(tmp_path / "saved"))
    # What a path would reach: a decoy repo folder beside the cache's refs and snapshots.
    (repo_folder(cache, "org/bert") / "x").write_text(COMMIT)
    error = _errors(runner, "report", "org/bert", "--revision", revision)
    assert f"--revision {revision!r} is not a branch, tag or commit name" in error


def test_a_snapshot_folder_that_is_a_link_is_refused(
    runner: CliRunner, tmp_path: Path, cache: Path
) -> None:
    saved = tiny_bert_folder(tmp_path / "saved")
    snapshot = cache_repo(cache, "org/bert", saved)
    for f in snapshot.iterdir():
        f.unlink()
    snapshot.rmdir()
    os.symlink(saved, snapshot)  # the "snapshot" is any folder on the machine
    error = _errors(runner, "report", "org/bert")
    assert f"the Hugging Face cache's models--org--bert has no snapshot {COMMIT}" in error


@pytest.mark.parametrize(
    "target", ["../x", "a/../../b", "..", "org/..", "/abs/x", "a/b/c", "a--b", "x.git", "-x"]
)
def test_a_target_with_a_path_in_it_is_never_looked_up_in_the_cache(
    runner: CliRunner, tmp_path: Path, cache: Path, target: str
) -> None:
    # A decoy the cache would give, were the target's path joined to it.
    cache_repo(cache, "x", tiny_bert_folder(tmp_path / "saved"))
    assert not is_hub_target(target)
    assert locate(target) == target
    result = runner.invoke(app, ["report", target])
    assert result.exit_code == 2, result.output
    assert "Hugging Face" not in result.stderr
    with pytest.raises(Exception, match="is not a Hugging Face model id"):
        snapshot_folder(target)


def test_hub_ids_follow_the_hubs_rules() -> None:
    ok = ["gpt2", "bert-base-uncased", "google/vit-base-patch16-224", "a/Llama-3.1-8B"]
    assert all(is_hub_id(i) for i in ok)
    assert not any(is_hub_id(i) for i in ["", "a/b/c", "a b", "é/x", "a/" + "x" * 97])


def test_an_index_may_name_a_shard_only_as_the_cache_links_it(
    runner: CliRunner, tmp_path: Path, cache: Path
) -> None:
    saved = tiny_bert_folder(tmp_path / "saved", shard=True)
    snapshot = cache_repo(cache, "org/bert", saved)
    index = json.loads((snapshot / "model.safetensors.index.json").read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    blob = (snapshot / first).resolve()
    # A name with "..", even one that leads back to the snapshot's own link, is not the
    # cache's shape.
    dotted_name = f"../{COMMIT}/{first}"
    dotted = {k: dotted_name if v == first else v for k, v in index["weight_map"].items()}
    index_blob = (snapshot / "model.safetensors.index.json").resolve()
    index_blob.write_text(json.dumps({**index, "weight_map": dotted}))
    error = _errors(runner, "report", "org/bert")
    assert f"names shard '{dotted_name}', which lies outside {snapshot}" in error
    # A shard in a subfolder whose link leaves the repo (the top-level check does not see it).
    (snapshot / "sub").mkdir()
    os.symlink(saved / first, snapshot / "sub" / first)
    moved = {k: f"sub/{first}" if v == first else v for k, v in index["weight_map"].items()}
    index_blob.write_text(json.dumps({**index, "weight_map": moved}))
    error = _errors(runner, "report", "org/bert")
    assert f"names shard 'sub/{first}', which lies outside {snapshot}" in error
    # The same subfolder link into the repo's own blobs is the cache's shape.
    _relink(snapshot / "sub" / first, os.path.join("..", "..", "..", "blobs", blob.name))
    result = runner.invoke(app, ["report", "org/bert", "-q"])
    assert result.exit_code == 0, result.output


def test_a_huge_config_json_is_not_read(runner: CliRunner, tmp_path: Path, cache: Path) -> None:
    snapshot = cache_repo(cache, "org/bert", tiny_bert_folder(tmp_path / "saved"))
    config = (snapshot / "config.json").resolve()
    config.write_bytes(b"{" + b" " * (5 * 2**20) + b"}")
    result = runner.invoke(app, ["report", "org/bert", "-q"])
    assert result.exit_code == 0, result.output  # the tensors are still read, bare
    assert "config.json is over 4 MiB" in result.stderr
    assert "reading it as a bare state dict" in result.stderr


def _cli(args: list[str], cache: Path) -> subprocess.CompletedProcess[str]:
    """``initscope ARGS`` in a subprocess with a hard timeout: opening a FIFO waits for a
    writer forever, which fails the test instead of hanging the suite."""
    return subprocess.run(
        [sys.executable, "-m", "initscope", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_CACHE": str(cache)},
    )


@pytest.mark.slow
def test_a_fifo_in_the_cache_is_never_opened(tmp_path: Path, cache: Path) -> None:
    saved = tiny_bert_folder(tmp_path / "saved")
    snapshot = cache_repo(cache, "org/bert", saved)
    repo = repo_folder(cache, "org/bert")
    (repo / "refs" / "main").unlink()
    os.mkfifo(repo / "refs" / "main")
    result = _cli(["report", "org/bert"], cache)
    assert result.returncode == 2, result.stderr
    assert "the cache's refs/main of org/bert is not a regular file" in result.stderr
    (repo / "refs" / "main").unlink()
    (repo / "refs" / "main").write_text(COMMIT)
    # A blob that is a FIFO: the weights are refused, a config.json is not taken for one.
    blob = (snapshot / "model.safetensors").resolve()
    blob.unlink()
    os.mkfifo(blob)
    result = _cli(["report", "org/bert"], cache)
    assert result.returncode == 2, result.stderr
    assert "model.safetensors is not a regular file" in result.stderr
    blob.unlink()
    write_safetensors(blob, {"w": torch.zeros(2)})
    config = (snapshot / "config.json").resolve()
    config.unlink()
    os.mkfifo(config)
    result = _cli(["report", "org/bert"], cache)
    assert result.returncode == 0, result.stderr
    assert "no model given" in result.stdout
    assert "Traceback" not in result.stderr
