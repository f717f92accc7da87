"""Any SAE: format sniffing, run folders holding several SAEs, hub references, bad input."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from peers import random_weights, saelens_cfg, write_dir

from saes import SAEConfig, build_sae, save_sae
from saes.formats import detect_format, find_any, load_any, parse_hub_ref
from saes.formats.hub import HubRef
from workbench.errors import WorkbenchError

D, F = 8, 24


def our_sae(seed: int = 0):
    cfg = SAEConfig(architecture="topk", d_in=D, num_features=F, k=3, hook="blocks.0.hook_resid_post")
    return build_sae(cfg, generator=torch.Generator().manual_seed(seed))


def sparsify_dir(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = {"encoder.weight": torch.randn(F, D, generator=g), "encoder.bias": torch.zeros(F),
         "W_dec": torch.randn(F, D, generator=g), "b_dec": torch.zeros(D)}
    return write_dir(d, {"num_latents": F, "k": 3, "d_in": D}, t, "sae.safetensors")


def mixed_run(root):
    """One run folder holding an SAE of each format, plus one of our training checkpoints."""
    save_sae(our_sae(), root / "ours" / "topk-k3-x3")
    save_sae(our_sae(1), root / "ours" / "checkpoint" / "step10")
    write_dir(root / "saelens" / "blocks.0.hook_resid_post", saelens_cfg("standard", D, F, hook="blocks.0.hook_resid_post"),
              random_weights(D, F, 0), "sae_weights.safetensors")
    sparsify_dir(root / "sparsify" / "layers.0")
    return root


def test_detects_each_format_and_finds_all_saes_of_a_run(tmp_path, one_thread):
    root = mixed_run(tmp_path / "run")
    assert detect_format(root / "ours" / "topk-k3-x3") == "workbench"
    assert detect_format(root / "saelens" / "blocks.0.hook_resid_post") == "saelens"
    assert detect_format(root / "sparsify" / "layers.0") == "sparsify"
    found = find_any(root)
    assert list(found) == ["ours/topk-k3-x3", "saelens/blocks.0.hook_resid_post", "sparsify/layers.0"]
    assert all(s.cfg.hook == "blocks.0.hook_resid_post" for s in found.values())
    # Ours loads through our own loader: the same weights as saved.
    for name, t in our_sae().weight_tensors().items():
        assert torch.equal(found["ours/topk-k3-x3"].weight_tensors()[name], t)
    with pytest.raises(WorkbenchError, match="holds 3 SAEs; load one of: ours/topk-k3-x3, saelens/") as e:
        load_any(root)
    assert "\n" not in str(e.value)
    assert load_any(root / "sparsify").cfg.hook == "blocks.0.hook_resid_post"


def test_unknown_format_and_missing_paths_give_one_line(tmp_path):
    d = tmp_path / "mystery"
    d.mkdir()
    (d / "cfg.json").write_text(json.dumps({"width": 3}))
    for ref, message in [
        (d, "holds an SAE format the workbench does not know; known layouts: sae-workbench"),
        (tmp_path / "nowhere", "the path does not exist"),
        (tmp_path, "holds an SAE format the workbench does not know"),  # its only cfg.json is unknown
    ]:
        with pytest.raises(WorkbenchError, match=message) as e:
            load_any(ref)
        assert "\n" not in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WorkbenchError, match="no cfg.json in it or below it"):
        find_any(empty)
    (d / "cfg.json").write_text("[1, 2]")
    with pytest.raises(WorkbenchError, match="must hold a JSON object"):
        load_any(d)


def test_unknown_cfgs_beside_saes_are_skipped(tmp_path):
    root = mixed_run(tmp_path / "run")
    (root / "notes").mkdir()
    (root / "notes" / "cfg.json").write_text("{}")
    assert "notes" not in find_any(root)


@pytest.mark.parametrize("ref, parsed", [
    ("hf://org/repo", HubRef("org/repo", "", None)),
    ("hf://org/repo/blocks.8.hook_resid_post", HubRef("org/repo", "blocks.8.hook_resid_post", None)),
    ("hf://org/repo@v1.0/a/b/", HubRef("org/repo", "a/b", "v1.0")),
    ("runs/local/dir", None),
])
def test_hub_refs_parse(ref, parsed):
    assert parse_hub_ref(ref) == parsed


@pytest.mark.parametrize("ref", ["hf://org", "hf://org/re po/x", "hf://org/repo@/x", "hf://org/repo/../x"])
def test_malformed_hub_refs_give_one_line(ref):
    with pytest.raises(WorkbenchError, match="hub reference"):
        parse_hub_ref(ref)


def test_hub_folder_goes_through_the_download_step(tmp_path, one_thread):
    snapshot = mixed_run(tmp_path / "snapshot")
    calls = []

    def download(**kw):  # stands in for snapshot_download: the snapshot root, as it returns
        calls.append(kw)
        return str(snapshot)

    sae = load_any("hf://org/repo@abc/sparsify/layers.0", download=download)
    assert calls == [{"repo_id": "org/repo", "revision": "abc", "allow_patterns": ["sparsify/layers.0/*"]}]
    assert sae.cfg.hook == "blocks.0.hook_resid_post"
    assert len(find_any("hf://org/repo", download=download)) == 3
    assert calls[-1]["allow_patterns"] is None
    with pytest.raises(WorkbenchError, match="hub repository org/repo has no folder 'layers.9'"):
        load_any("hf://org/repo/layers.9", download=download)

    def offline(**kw):
        raise OSError("Cannot reach the Hub\nsecond line")

    with pytest.raises(WorkbenchError, match="could not fetch hf://org/repo/x from the Hugging Face Hub: OSError: "
                                             "Cannot reach the Hub$"):
        load_any("hf://org/repo/x", download=offline)


def test_real_snapshot_download_reads_the_hugging_face_cache(tmp_path, one_thread):
    """huggingface_hub itself, offline, on a cache laid out as a download leaves it."""
    from huggingface_hub import snapshot_download

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--saes"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    sparsify_dir(repo / "snapshots" / commit / "layers.0")
    download = functools.partial(snapshot_download, cache_dir=str(tmp_path / "hub"), local_files_only=True)
    sae = load_any("hf://org/saes/layers.0", download=download)
    assert sae.cfg.hook == "blocks.0.hook_resid_post" and sae.num_features == F
    with pytest.raises(WorkbenchError, match="could not fetch hf://org/other/layers.0 from the Hugging Face Hub"):
        load_any("hf://org/other/layers.0", download=download)


def export_cli(argv):
    import argparse

    from saes.formats.cli import add_export_verb

    parser = argparse.ArgumentParser()
    add_export_verb(parser.add_subparsers())
    args = parser.parse_args(["export", *argv])
    return args.func(args)


def test_export_verb_converts_a_mixed_run(tmp_path, one_thread, capsys):
    root = mixed_run(tmp_path / "run")
    assert export_cli([str(root), "--to", "saelens", "--out", str(tmp_path / "sl")]) == 0
    back = find_any(tmp_path / "sl")
    assert list(back) == list(find_any(root))  # same names, now all SAELens
    assert {detect_format(tmp_path / "sl" / n) for n in back} == {"saelens"}
    assert "sparsify/layers.0: topk 8x24 at blocks.0.hook_resid_post" in capsys.readouterr().out
    # Back to ours: same weights as the original SAE of our format.
    export_cli([str(tmp_path / "sl" / "ours" / "topk-k3-x3"), "--to", "workbench", "--out", str(tmp_path / "wb")])
    assert detect_format(tmp_path / "wb") == "workbench"
    for name, t in our_sae().weight_tensors().items():
        assert torch.equal(load_any(tmp_path / "wb").weight_tensors()[name], t)
    # Three SAEs at one hook cannot share a sparsify run; the relu one cannot be sparsify at all.
    with pytest.raises(WorkbenchError, match="cannot be written as sparsify"):
        export_cli([str(root), "--to", "sparsify", "--out", str(tmp_path / "sp")])
    two = tmp_path / "two"
    save_sae(our_sae(), two / "a")
    sparsify_dir(two / "layers.0")
    with pytest.raises(WorkbenchError, match=r"several SAEs at hookpoint\(s\) \['layers.0'\]"):
        export_cli([str(two), "--to", "sparsify", "--out", str(tmp_path / "sp")])
    assert not (tmp_path / "sp").exists()
    with pytest.raises(WorkbenchError, match="unknown export format 'onnx'; valid choices: saelens, sparsify"):
        export_cli([str(root), "--to", "onnx", "--out", str(tmp_path / "x")])
