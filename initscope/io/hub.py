"""Hugging Face hub ids (``bert-base-uncased``, ``google/vit-base-patch16-224``), resolved
from the local Hugging Face cache only: initscope never downloads, whatever
``HF_HUB_OFFLINE`` says.

The cache's layout is read here, not through ``huggingface_hub`` (whose lookups may reach
the network): ``<cache>/models--ORG--NAME/refs/<revision>`` holds a commit hash,
``snapshots/<hash>/<file>`` is a relative symlink to ``../../blobs/<etag>``, the file's bytes.
The cache is data on disk like any folder: a ref must hold a commit hash, and a snapshot's
links must resolve into their own repo's ``blobs`` folder (:func:`in_cache_blobs`) — the one
shape of "a file outside its folder" initscope accepts without ``--allow-outside``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from pathlib import Path

from initscope.errors import CheckpointError, TargetError

__all__ = [
    "cache_folder",
    "in_cache_blobs",
    "is_hub_id",
    "not_cached_hint",
    "snapshot_folder",
]

# huggingface_hub.constants: REPO_TYPE "models" and REPO_ID_SEPARATOR "--" name a repo's
# folder (file_download.repo_folder_name).
REPO_FOLDER_PREFIX = "models--"
# huggingface_hub.utils._validators.REPO_ID_REGEX and validate_repo_id: an optional
# namespace and a name of ASCII letters, digits, "_", "-", "." (at most 96 each), neither
# starting nor ending with "-" or "."; no "--" or ".."; not ending with ".git".
_REPO_ID = re.compile(r"(\b[\w\-.]{1,96}\b/)?\b[\w\-.]{1,96}\b", re.ASCII)
# huggingface_hub.file_download.REGEX_COMMIT_HASH: a snapshot is named by its full commit.
_COMMIT = re.compile(r"[0-9a-f]{40}")
# A revision's name as refs/ stores it: branch or tag names ("main", "v1.0", "refs/pr/1").
_REVISION_PART = re.compile(r"[\w\-.]{1,255}", re.ASCII)
# A ref file holds a 40-character hash; anything much longer is not one and is not read.
MAX_REF_BYTES = 256
# The most entries of a snapshot folder checked (a model repo holds tens of files).
MAX_SNAPSHOT_ENTRIES = 10_000


def cache_folder() -> Path:
    """The hub cache folder, as huggingface_hub.constants computes it: ``HF_HUB_CACHE``,
    else the older ``HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``, with ``HF_HOME``
    defaulting to ``$XDG_CACHE_HOME/huggingface`` and that to ``~/.cache/huggingface``."""
    home = os.getenv("HF_HOME") or os.path.join(
        os.getenv("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "huggingface",
    )
    home = os.path.expandvars(os.path.expanduser(home))
    hub = os.getenv("HF_HUB_CACHE") or os.getenv("HUGGINGFACE_HUB_CACHE")
    return Path(os.path.expandvars(os.path.expanduser(hub)) if hub else os.path.join(home, "hub"))


def is_hub_id(target: str) -> bool:
    """Whether ``target`` is spelled as a hub model id: ``NAME`` or ``ORG/NAME`` by the hub's
    own rules, so never an absolute path, ``..``, or more than one ``/``."""
    return (
        target.count("/") <= 1
        and _REPO_ID.fullmatch(target) is not None
        and "--" not in target
        and ".." not in target
        and not target.endswith(".git")
    )


def not_cached_hint(repo_id: str) -> str:
    """The hint for a hub id the cache does not hold."""
    return (
        f"{repo_id} is not in the local Hugging Face cache (initscope never downloads; run "
        f"`hf download {repo_id}` first)"
    )


def snapshot_folder(repo_id: str, revision: str | None = None) -> Path | None:
    """The cached snapshot of hub model ``repo_id`` at ``revision`` (a branch or tag in the
    cache's ``refs/``, or a full commit hash; default ``main``): a folder to read as a model
    folder. None when the cache has no folder for the id; :class:`TargetError` when it has
    one that does not hold that revision, or is not the cache's shape."""
    if not is_hub_id(repo_id):
        raise TargetError(f"{repo_id!r} is not a Hugging Face model id", "write ORG/NAME")
    repo = cache_folder() / (REPO_FOLDER_PREFIX + repo_id.replace("/", "--"))
    if not repo.is_dir():
        return None
    commit = _commit(repo, repo_id, revision or "main")
    snapshots = repo / "snapshots"
    snapshot = snapshots / commit
    if snapshot.is_symlink() or not snapshot.is_dir():
        raise TargetError(
            f"the Hugging Face cache's {repo.name} has no snapshot {commit}",
            f"download it again: hf download {repo_id}"
            + (f" --revision {revision}" if revision else ""),
        )
    _check_snapshot(snapshot, repo_id)
    return snapshot


def _commit(repo: Path, repo_id: str, revision: str) -> str:
    """The commit hash ``revision`` names in ``repo``: itself when it is one, else what its
    file in ``refs/`` holds (read without blocking, at most MAX_REF_BYTES)."""
    if _COMMIT.fullmatch(revision):
        return revision
    parts = revision.split("/")
    if not all(_REVISION_PART.fullmatch(p) and p not in (".", "..") for p in parts):
        raise TargetError(
            f"--revision {revision!r} is not a branch, tag or commit name",
            "pass a branch or tag (main, v1.0) or a full 40-character commit hash",
        )
    ref = repo / "refs" / revision
    if not ref.exists():
        held = _cached_commits(repo)
        raise TargetError(
            f"the Hugging Face cache holds {repo_id} but not its revision {revision!r} "
            f"(no refs/{revision})",
            (f"pass --revision with a cached commit ({', '.join(held)}), or " if held else "")
            + f"download it: hf download {repo_id}"
            + (f" --revision {revision}" if revision != "main" else ""),
        )
    from initscope.io.checkpoints import read_regular  # checkpoints imports this module

    try:
        text = read_regular(ref, MAX_REF_BYTES, f"the cache's refs/{revision} of {repo_id}")
    except CheckpointError as exc:
        raise TargetError(exc.message, f"download it again: hf download {repo_id}") from None
    commit = text.decode("ascii", "replace").strip()
    if not _COMMIT.fullmatch(commit):
        raise TargetError(
            f"the cache's refs/{revision} of {repo_id} does not hold a commit hash",
            f"download it again: hf download {repo_id}",
        )
    return commit


def _cached_commits(repo: Path, most: int = 5) -> list[str]:
    """The first few commits whose snapshots the cache holds (of at most
    MAX_SNAPSHOT_ENTRIES looked at)."""
    with contextlib.suppress(OSError), os.scandir(repo / "snapshots") as entries:
        names = [e.name for e in itertools.islice(entries, MAX_SNAPSHOT_ENTRIES)]
        return sorted(n for n in names if _COMMIT.fullmatch(n))[:most]
    return []


def _check_snapshot(snapshot: Path, repo_id: str) -> None:
    """Refuse a snapshot with a link that leaves the cache's shape: each symlink among its
    files must resolve into its own repo's ``blobs`` folder."""
    with os.scandir(snapshot) as entries:
        for i, entry in enumerate(entries):
            if i >= MAX_SNAPSHOT_ENTRIES:
                raise TargetError(
                    f"the Hugging Face cache's snapshot of {repo_id} holds over "
                    f"{MAX_SNAPSHOT_ENTRIES:,} files",
                    "a model repo holds tens; check the cache",
                )
            path = Path(entry.path)
            if entry.is_symlink() and not in_cache_blobs(path, snapshot):
                raise TargetError(
                    f"{path} links to {_shown_link(path)}, outside the cache's blobs "
                    f"folder of {repo_id}",
                    "initscope reads a snapshot's links only into its own blobs; download it "
                    f"again: hf download {repo_id} --force-download",
                )


def _shown_link(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def in_cache_blobs(path: Path, folder: Path) -> bool:
    """Whether ``path``, a file named inside ``folder`` (no ``..``), is the Hugging Face
    cache's shape of a file outside it: ``folder`` is ``<cache>/models--X/snapshots/<rev>``
    and ``path`` resolves to a file directly in ``<cache>/models--X/blobs``."""
    try:
        relative = path.relative_to(folder)
        snapshot = folder.resolve()
        target = path.resolve()
    except (OSError, RuntimeError, ValueError):  # outside, a symlink loop, a NUL byte
        return False
    if ".." in relative.parts:
        return False
    repo = snapshot.parent.parent
    return (
        snapshot.parent.name == "snapshots"
        and repo.name.startswith(REPO_FOLDER_PREFIX)
        and target.parent == repo / "blobs"
    )
