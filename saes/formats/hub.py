"""SAEs on the Hugging Face Hub: `hf://owner/repo[@revision][/folder/inside/it]`.

SAELens releases and sparsify uploads both keep one SAE per folder of a repository (SAELens:
`blocks.8.hook_resid_post/`, sparsify: `layers.8/`), so a reference names the repository and
the folder; only that folder is downloaded (`snapshot_download(allow_patterns=folder/*)`), into
the ordinary Hugging Face cache, where HF_HUB_OFFLINE=1 finds it again without the network.
Without a folder the whole repository is fetched and every SAE in it is found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from workbench.errors import WorkbenchError

PREFIX = "hf://"
_REPO_PART = re.compile(r"^[A-Za-z0-9][\w.-]*$")

# snapshot_download's signature (keyword arguments repo_id, revision, allow_patterns) -> local folder.
Download = Callable[..., Any]


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    folder: str = ""
    revision: str | None = None

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{PREFIX}{self.repo_id}{rev}" + (f"/{self.folder}" if self.folder else "")


def parse_hub_ref(ref: str) -> HubRef | None:
    """`hf://owner/repo[@rev]/folder` as a HubRef; None for anything that is not an hf:// reference."""
    if not ref.startswith(PREFIX):
        return None
    parts = [p for p in ref[len(PREFIX):].split("/") if p]
    if len(parts) < 2:
        raise WorkbenchError(f"hub reference {ref!r} must name owner/repo: hf://owner/repo[@revision][/folder]")
    owner, repo = parts[0], parts[1]
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    if not (_REPO_PART.match(owner) and _REPO_PART.match(repo)) or revision == "":
        raise WorkbenchError(f"hub reference {ref!r} has a malformed repository id; expected hf://owner/repo[@revision][/folder]")
    if any(p in (".", "..") for p in parts[2:]):
        raise WorkbenchError(f"hub reference {ref!r}: the folder may not contain '.' or '..' parts")
    return HubRef(f"{owner}/{repo}", "/".join(parts[2:]), revision)


def hub_snapshot(ref: HubRef, download: Download | None = None) -> Path:
    """The local folder holding `ref` (downloaded, or found in the cache when offline).

    `download` stands in for `huggingface_hub.snapshot_download` (same keyword arguments, returns
    the snapshot's root folder), so the same path runs on a local folder in tests.
    """
    if download is None:
        from huggingface_hub import snapshot_download as download
    patterns = [f"{ref.folder}/*"] if ref.folder else None
    try:
        root = Path(download(repo_id=ref.repo_id, revision=ref.revision, allow_patterns=patterns))
    except (OSError, ValueError) as e:  # hub errors (offline, 404, auth, HTTP, bad id) all derive from these
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise WorkbenchError(f"could not fetch {ref} from the Hugging Face Hub: {type(e).__name__}: {first}") from None
    path = root / ref.folder if ref.folder else root
    if not path.is_dir():
        raise WorkbenchError(f"hub repository {ref.repo_id} has no folder {ref.folder!r} (at revision "
                             f"{ref.revision or 'main'})")
    return path
