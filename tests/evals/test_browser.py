"""`sae browse` end to end, and the pages it writes opened in headless Chromium (Debian `chromium`)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.evals.inspect_support import PAYLOAD, tiny_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/setup.sh installs it)")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from workbench.cli import main

    torch.set_num_threads(1)
    tiny = tiny_for(tmp_path_factory)
    out = tmp_path_factory.mktemp("site")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["browse", "--sae", str(tiny["sae"]), "--cache", str(tiny["cache"]), "--out", str(out), "--no-progress"])
    assert rc == 0
    index = Path(buf.getvalue().strip().splitlines()[-1])
    assert index == (out / "index.html").resolve() and index.is_file()
    from evals.features import FeatureData

    return {"out": out, "index": index, "data": FeatureData(tiny["sae"] / "features"), **tiny}


def chromium(url: str, tmp: Path, *extra: str) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
           "--virtual-time-budget=3000", *extra, url]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def test_browse_refuses_bad_inputs_with_one_line(site, tmp_path):
    env_sae = tmp_path / "other_model"
    shutil.copytree(site["sae"], env_sae, ignore=shutil.ignore_patterns("features", "browser"))
    cfg = json.loads((env_sae / "cfg.json").read_text())
    (env_sae / "cfg.json").write_text(json.dumps({**cfg, "model_id": "HuggingFaceTB/SmolLM2-135M-Instruct"}))
    other_hook = tmp_path / "other_hook"
    shutil.copytree(site["sae"], other_hook, ignore=shutil.ignore_patterns("features", "browser"))
    (other_hook / "cfg.json").write_text(json.dumps({**cfg, "hook": "blocks.0.hook_resid_post"}))
    cases = [
        (["--sae", str(tmp_path / "nope"), "--cache", str(site["cache"])], "nope"),
        (["--sae", str(site["sae"]), "--cache", str(tmp_path / "nocache")], "nocache"),
        (["--sae", str(env_sae), "--cache", str(site["cache"])], "SmolLM2"),
        (["--sae", str(other_hook), "--cache", str(site["cache"])], "blocks.0.hook_resid_post"),
    ]
    for args, needle in cases:
        res = subprocess.run([sys.executable, "-m", "workbench.cli", "browse", *args, "--no-progress"],
                             capture_output=True, text=True, timeout=120)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode == 2, res.stderr
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in res.stderr, res.stderr


@needs_chromium
def test_feature_page_renders_its_contexts(site, tmp_path):
    data = site["data"]
    f = int(torch.argmax(data.tensors["nnz"]))
    dom = chromium((site["out"] / "features" / f"{f:05d}.html").as_uri(), tmp_path, "--dump-dom")
    assert f"Feature {f}" in dom and "Top activations" in dom
    n_top = int(torch.isfinite(data.tensors["top_val"][f]).sum())
    assert dom.count('class="ctx"') >= n_top > 0
    centre = data.token(int(data.tensors["top_tok"][f, 0, data.tensors["top_tok"].shape[2] // 2]))
    assert 'class="c"' in dom and html.escape(centre.strip()) in dom
    assert "Logit lens" in dom and "<svg" in dom
    # the map: one clickable point per feature, each linking to an existing page
    links = re.findall(r'<a href="features/(\d{5})\.html"><circle', (site["out"] / "map.html").read_text())
    assert sorted(int(x) for x in links) == list(range(data.num_features))
    assert all((site["out"] / "features" / f"{x}.html").is_file() for x in links)


@needs_chromium
def test_search_finds_a_feature_by_its_token(site, tmp_path):
    data = site["data"]
    # a feature and one of its top tokens that few other features share
    best = None
    for f in range(data.num_features):
        for tok in data.top_tokens(f, 5):
            t = tok.strip()
            if len(t) >= 4 and t.isalpha():
                sharing = sum(any(t in s.strip() for s in data.top_tokens(g, 5)) for g in range(data.num_features))
                if best is None or sharing < best[2]:
                    best = (f, t, sharing)
    f, tok, _ = best
    dom = chromium(site["index"].as_uri() + f"#q={tok}&by=act", tmp_path, "--dump-dom")
    assert 'data-ready="1"' in dom
    listed = set(int(m) for m in re.findall(r'href="features/(\d{5})\.html"', dom))
    assert f in listed
    assert len(listed) < data.num_features
    empty = chromium(site["index"].as_uri() + "#q=zzzqqqxx", tmp_path, "--dump-dom")
    assert not re.findall(r'href="features/\d{5}\.html"', empty)


@needs_chromium
def test_script_token_is_shown_never_executed(site, tmp_path):
    data = site["data"]
    script = [k for k, v in data.vocab.items() if v.strip() == "<script>"]
    assert script, "the payload's <script> token must be among the decoded tokens"
    pages = [f for f in range(data.num_features) if (data.tensors["top_tok"][f] == int(script[0])).any()]
    assert 0 in pages
    for url in [(site["out"] / "features" / "00000.html").as_uri(), site["index"].as_uri() + "#q=<script>&by=act"]:
        dom = chromium(url, tmp_path, "--dump-dom")
        assert "&lt;script&gt;" in dom  # shown as text
        assert "pwned" not in re.findall(r"<title>(.*?)</title>", dom)[0]
        assert not re.search(r"<body[^>]*style=", dom)  # the payload would have set body.style.background
        assert "<script>document" not in dom
        if "index.html" in url:
            assert 'href="features/00000.html"' in dom  # found by the token, rendered via textContent
        shot = tmp_path / "shot.png"
        chromium(url, tmp_path, f"--screenshot={shot}", "--window-size=1000,900")
        red, white = _colours(shot)
        assert red < 0.01, "the page turned red: the payload ran"
        assert 0.3 < white < 0.995, "the page should show text on a white background"
    # control: the same payload unescaped does run, and both checks see it
    raw = tmp_path / "raw.html"
    raw.write_text(f"<!doctype html><html><head><title>x</title></head><body><p>{PAYLOAD}</p></body></html>")
    dom = chromium(raw.as_uri(), tmp_path, "--dump-dom")
    assert "pwned" in re.findall(r"<title>(.*?)</title>", dom)[0]
    chromium(raw.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1000,900")
    assert _colours(shot)[0] > 0.5


def _colours(png: Path) -> tuple[float, float]:
    """Fractions of pure-red and of white pixels in a screenshot."""
    import numpy as np
    from PIL import Image

    px = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3).astype(int)
    red = ((px[:, 0] > 200) & (px[:, 1] < 40) & (px[:, 2] < 40)).mean()
    return float(red), float((px.sum(1) > 740).mean())
