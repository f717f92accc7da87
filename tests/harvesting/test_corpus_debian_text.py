"""The offline corpus 'debian-text' read from a fake Debian file layout (no package download).

The layout copies what the four Debian packages install: dictd databases (`.index` + dictzip'd
`.dict.dz`) for GCIDE and WordNet, the kernel's Documentation tree (gzipped reST) and Python's
Sphinx sources. The dictd index offsets are written with an encoder of our own, from dictd's
definition (base-64 digits, most significant first, alphabet A-Z a-z 0-9 + /), not the reader's.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from harvesting import corpus as corpus_mod
from harvesting.corpus import debian_text_records, open_documents
from workbench.errors import WorkbenchError

_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(n: int) -> str:
    out = ""
    while True:
        out = _DIGITS[n % 64] + out
        n //= 64
        if n == 0:
            return out


def _write_dictd(d: Path, name: str, entries: list[tuple[str, str]], aliases: dict[str, str]) -> None:
    """entries: (headword, raw entry text) in file order; aliases: extra headword -> headword it shares."""
    body, index, where = b"", [], {}
    for head, text in entries:
        raw = text.encode()
        where[head] = (len(body), len(raw))
        body += raw
    for head, (off, ln) in where.items():
        index.append((head, off, ln))
    for alias, head in aliases.items():
        index.append((alias, *where[head]))
    index.sort(key=lambda r: r[0].lower())
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.index").write_text("".join(f"{h}\t{_b64(o)}\t{_b64(n)}\n" for h, o, n in index))
    with gzip.open(d / f"{name}.dict.dz", "wb") as f:
        f.write(body)


def _gz(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        f.write(text)


GCIDE_AFFECT = (
    'Affect \\Af*fect"\\, v. t. [L. affectus, p. p. of afficere. See\n'
    "   {Fact}.]\n"
    "   1. To act upon; to produce an effect or change upon.\n"
    "      [1913 Webster]\n"
    "\n"
    "            As might affect the earth with cold heat. --Milton.\n"
    "      [1913 Webster]\n"
    "\n"
    "   2. To love; to regard with affection. [Obs.]\n"
    "      [1913 Webster]\n\n"
)
WN_NEGUS = "negus\n    n 1: wine and hot water with sugar and lemon juice and nutmeg\n"
WN_NEHRU = (
    "Nehru\n"
    "    n 1: Indian statesman and leader with Gandhi in the struggle for\n"
    "         home rule [syn: {Nehru},\n"
    "         {Jawaharlal Nehru}]\n"
    "    v 2: a made-up second sense\n"
)


@pytest.fixture()
def debian_root(tmp_path, monkeypatch) -> Path:
    """A fake install under $XDG_CACHE_HOME/workbench/debian-text, the loader's default place."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "xdg" / "workbench" / "debian-text"
    dictd = root / "usr/share/dictd"
    _write_dictd(dictd, "gcide", [("00-database-short", "   The Collaborative International Dictionary\n"),
                                  ("Affect", GCIDE_AFFECT)], {"affect": "Affect"})
    _write_dictd(dictd, "wn", [("00-database-info", "This file was converted\n"), ("negus", WN_NEGUS),
                               ("Nehru", WN_NEHRU)], {})
    # Two kernel versions: the newest one by version order (6.12 > 6.9) is read, not the last string.
    _gz(root / "usr/share/doc/linux-doc-6.9/Documentation/networking/old.rst.gz", "Old networking docs.\n")
    docs = root / "usr/share/doc/linux-doc-6.12/Documentation"
    _gz(docs / "networking/napi.rst.gz", "NAPI\n====\n\nNAPI is the event handling mechanism.\n")
    _gz(docs / "process/howto.txt.gz", "How to do Linux kernel development.\n")
    _gz(docs / "translations/zh_CN/index.rst.gz", "not English\n")  # translations: left out
    _gz(docs / "devicetree/bindings/foo.txt.gz", "compatible: foo\n")  # device-tree bindings: left out
    _gz(docs / "conf.py.gz", "project = 'x'\n")  # not documentation text
    src = root / "usr/share/doc/python3.11/html/_sources"
    (src / "tutorial").mkdir(parents=True)
    (src / "tutorial/interpreter.rst.txt").write_text("Using the Python Interpreter\n****\n\nIt is installed.\n")
    (src / "contents.rst.txt").write_text("Python Documentation contents\n")
    return root


def test_records_from_the_four_packages_in_a_fixed_order(debian_root) -> None:
    recs = debian_text_records()
    got = [(r["source"], r["title"], r["topic"]) for r in recs]
    assert got == [
        ("gcide", "Affect", "gcide"),
        ("wordnet", "negus", "wordnet"),
        ("wordnet", "Nehru", "wordnet"),
        ("linux-doc", "networking/napi.rst", "networking"),
        ("linux-doc", "process/howto.txt", "process"),
        ("python-doc", "contents.rst", "python-doc"),
        ("python-doc", "tutorial/interpreter.rst", "tutorial"),
    ]
    text = {r["title"]: r["text"] for r in recs}
    # Dictionary entries: source tags dropped, wrapped lines joined, cross-reference braces removed,
    # one line per sense or quotation.
    assert text["Affect"] == ('Affect \\Af*fect"\\, v. t. [L. affectus, p. p. of afficere. See Fact.]\n'
                              "1. To act upon; to produce an effect or change upon.\n"
                              "As might affect the earth with cold heat. --Milton.\n"
                              "2. To love; to regard with affection. [Obs.]")
    assert text["Nehru"] == ("Nehru\n"
                             "n 1: Indian statesman and leader with Gandhi in the struggle for home rule "
                             "[syn: Nehru, Jawaharlal Nehru]\n"
                             "v 2: a made-up second sense")
    # Documentation files: their text as shipped.
    assert text["networking/napi.rst"] == "NAPI\n====\n\nNAPI is the event handling mechanism.\n"
    assert text["tutorial/interpreter.rst"].startswith("Using the Python Interpreter\n")


def test_open_documents_shuffles_every_record_once_by_seed(debian_root) -> None:
    recs = debian_text_records()
    a = list(open_documents("debian-text", seed=1))
    b = list(open_documents("debian-text", seed=1))
    c = list(open_documents("debian-text", seed=2))
    assert sorted(d.index for d in a) == list(range(len(recs)))
    assert all(d.text == recs[d.index]["text"] for d in a)
    assert [d.index for d in a] == [d.index for d in b]
    assert [d.index for d in a] != [d.index for d in c]


def test_missing_packages_give_one_line_with_the_command(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(corpus_mod, "debian_roots", lambda: (tmp_path / "empty",))  # hermetic: not "/"
    with pytest.raises(WorkbenchError) as e:
        list(open_documents("debian-text"))
    msg = str(e.value)
    assert "\n" not in msg
    assert "debian-text" in msg and "apt-get download dict-gcide dict-wn linux-doc-6.1 python3.11-doc" in msg
    assert f"mkdir -p {tmp_path / 'xdg' / 'workbench' / 'debian-text'} &&" in msg and "dpkg-deb -x" in msg


def test_one_missing_package_is_named(debian_root, monkeypatch) -> None:
    monkeypatch.setattr(corpus_mod, "debian_roots", lambda: (debian_root,))
    (debian_root / "usr/share/dictd/wn.index").unlink()
    with pytest.raises(WorkbenchError, match=r"missing: dict-wn\)"):
        debian_text_records()


def test_unknown_corpus_lists_debian_text() -> None:
    with pytest.raises(WorkbenchError, match=r"offline alias \(wiki-vital, debian-text\)"):
        list(open_documents("no-such/corpus"))
