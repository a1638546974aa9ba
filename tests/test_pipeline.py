"""One measurement pipeline: report, check and diff read a TARGET's tensors the same way."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from initscope.gate.check import check_target
from initscope.gate.diff import diff_targets
from initscope.io.checkpoints import Checkpoint, StoredTensor, open_checkpoint
from initscope.measure.pipeline import (
    Pieces,
    checkpoint_source,
    measure,
    model_source,
    readable,
)
from initscope.measure.report import build_report
from initscope.stats import fused

needs_kernel = pytest.mark.skipif(not fused.available(), reason="the C kernel is not built")


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "w.safetensors"
    save_file(
        {
            "fc.weight": torch.empty(64, 32).uniform_(-0.1, 0.1),
            "fc.bias": torch.zeros(64),
            "emb.weight": torch.randn(100, 16),
        },
        str(path),
    )
    return path


@needs_kernel
def test_check_reads_through_the_fused_file_reader_as_report_does(
    weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Neither command loads a tensor whole when the kernel can scan it in the file.
    def no_load(self: Checkpoint, name: str) -> torch.Tensor:
        raise AssertionError(f"{name} was loaded whole")

    monkeypatch.setattr(Checkpoint, "load", no_load)
    report = build_report(str(weights))
    assert {p.name for p in report.parameters} == {"fc.weight", "fc.bias", "emb.weight"}
    result = check_target(str(weights))
    assert result.ok, [v.line() for v in result.violations]
    assert set(result.parameters) == {"fc.weight", "fc.bias", "emb.weight"}


@needs_kernel
def test_check_reads_the_structure_tests_lines_only_when_it_identifies(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without rules or a "follows" expectation nothing is identified: the kernel copies out
    # no rows for the structure tests. With rules, it does, as report does.
    import initscope.measure.pipeline as pipeline
    from initscope.gate.check import CheckOptions
    from initscope.rules.language import load_rules

    asked: list[object] = []
    real = pipeline.file_stats

    def spy(*args: object, **kw: object) -> object:
        asked.append(kw.get("lines"))
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "file_stats", spy)
    assert check_target(str(weights)).ok
    assert len(asked) == 3 and all(lines is None for lines in asked)
    asked.clear()
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - param: weight\n    init: normal\n    std: 1\nunmatched: keep\n")
    check_target(str(weights), options=CheckOptions(rules=load_rules(rules)))
    assert any(lines is not None for lines in asked)
    # The statistics and the sample are the same either way.
    ckpt = open_checkpoint(weights)
    try:
        stored = readable(ckpt, "emb.weight")
        plain, lined = measure("emb.weight", stored, structure=False), measure("emb.weight", stored)
    finally:
        ckpt.close()
    assert plain.structure is None and lined.structure is not None
    assert plain.stats is not None and lined.stats is not None
    assert plain.stats.result() == lined.stats.result()
    assert torch.equal(plain.stats.sample(), lined.stats.sample())


def test_every_readable_form_measures_alike(weights: Path) -> None:
    ckpt = open_checkpoint(weights)
    try:
        whole = ckpt.load("emb.weight")
        forms = [
            measure("emb.weight", whole),
            measure(
                "emb.weight", Pieces(ckpt.infos["emb.weight"], ckpt.chunks("emb.weight", 1024))
            ),
        ]
        if fused.available():
            stored = readable(ckpt, "emb.weight")
            assert isinstance(stored, StoredTensor)
            forms.append(measure("emb.weight", stored))
        assert isinstance(readable(ckpt, "emb.weight", 1024, values=True), Pieces)
        assert isinstance(readable(ckpt, "emb.weight", values=True), torch.Tensor)
    finally:
        ckpt.close()
    first = forms[0].stats
    assert first is not None
    assert forms[0].values is not None and forms[1].values is None
    for m in forms:
        assert m.shape == (100, 16) and m.dtype == torch.float32 and m.numel == 1600
        assert m.stats is not None
        a, b = first.result(), m.stats.result()
        assert math.isclose(a.mean or 0.0, b.mean or 0.0, rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(a.std or 0.0, b.std or 0.0, rel_tol=1e-9)
        assert (a.min, a.max) == (b.min, b.max)
        # The sample's positions depend on the name only.
        assert torch.equal(first.sample(), m.stats.sample())


def test_a_meta_tensor_has_no_statistics() -> None:
    m = measure("w", torch.empty(3, 4, device="meta"))
    assert m.stats is None and m.shape == (3, 4)


def test_model_and_checkpoint_sources_read_the_same_tensors(weights: Path) -> None:
    ckpt = open_checkpoint(weights)
    try:
        from_file = checkpoint_source(ckpt, ckpt.keyed())
        in_memory = model_source({k: ckpt.load(k) for k in ckpt.infos})
        assert set(from_file.names) == set(in_memory.names)
        for name in from_file.names:
            assert from_file.info(name).shape == in_memory.info(name).shape
            assert torch.equal(from_file.load(name), in_memory.load(name))
            assert torch.equal(from_file.rows(name, 1, 3), in_memory.rows(name, 1, 3))
    finally:
        ckpt.close()


def test_diff_reads_both_sides_through_the_sources(weights: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.safetensors"
    ckpt = open_checkpoint(weights)
    try:
        state = {k: ckpt.load(k).clone() for k in ckpt.infos}
    finally:
        ckpt.close()
    state["fc.bias"] += 1
    save_file(state, str(other))
    result = diff_targets(str(weights), str(other), max_memory=512)  # rows, block by block
    status = {e.name: e.status.value for e in result.entries}
    assert status == {"fc.weight": "unchanged", "fc.bias": "changed", "emb.weight": "unchanged"}


def test_a_batch_holds_one_loaded_tensor_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """report measures tensors in batches of up to 16 and identifies them together; a
    tensor it has to load whole (no kernel, or a format the kernel cannot scan) is read
    when it is measured and let go before the next is read, never 16 at once."""
    import gc
    import weakref

    torch.manual_seed(1)
    path = tmp_path / "many.safetensors"
    save_file({f"layers.{i}.weight": torch.randn(32, 48) * 0.02 for i in range(20)}, str(path))
    monkeypatch.setattr(fused, "available", lambda: False)  # loads every tensor whole
    alive: list[weakref.ref[torch.Tensor]] = []
    most = 0
    real_load = Checkpoint.load

    def load(self: Checkpoint, name: str) -> torch.Tensor:
        nonlocal most
        gc.collect()
        most = max(most, sum(1 for r in alive if r() is not None))
        t = real_load(self, name)
        alive.append(weakref.ref(t))
        return t

    monkeypatch.setattr(Checkpoint, "load", load)
    from initscope.measure.report import ReportOptions

    report = build_report(str(path), options=ReportOptions(workers=1))
    assert len(report.parameters) == 20
    assert len(alive) == 20
    assert most == 0  # none of the earlier tensors is alive when the next is read
    assert all(p.fit is not None and p.fit.label == "normal(std=0.02)" for p in report.parameters)
