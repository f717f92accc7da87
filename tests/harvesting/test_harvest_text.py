"""Harvesting text models: shapes, dtypes, alignment with a direct forward pass, exclusions, multi-hook, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harvesting import CacheReader, HarvestConfig, harvest, load_model, read_manifest
from harvesting.cache import FORMAT_VERSION
from workbench.errors import WorkbenchError

HOOKS = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")


def _cfg(model: Path, corpus: Path, out: Path, **kw) -> HarvestConfig:
    base = dict(model=str(model), corpus=str(corpus), hooks=HOOKS, tokens=3000, out=str(out), context_length=32,
                batch_size=8, shard_tokens=1000, progress=False)
    base.update(kw)
    return HarvestConfig(**base)


def _all_rows(path: Path, hooks) -> dict[str, torch.Tensor]:
    r = CacheReader(path)
    parts = [r.load_shard(i, hooks) for i in range(len(r.shards))]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


@pytest.fixture(scope="module")
def causal_cache(tiny_causal_dir, text_corpus, tmp_path_factory) -> Path:
    return harvest(_cfg(tiny_causal_dir, text_corpus, tmp_path_factory.mktemp("c") / "acts"))


def test_shapes_dtypes_and_budget(causal_cache: Path) -> None:
    m = read_manifest(causal_cache)
    assert m["status"] == "complete" and m["format_version"] == FORMAT_VERSION
    rows = _all_rows(causal_cache, HOOKS)
    n = rows["token_ids"].shape[0]
    assert 3000 <= n < 3000 + 32  # the budget, never a whole batch more
    assert len(m["shards"]) >= 3  # shard_tokens=1000 split it
    for h in HOOKS:
        assert rows[h].shape == (n, 48) and rows[h].dtype == torch.float32
    assert rows["token_ids"].dtype == torch.int32 and rows["context_ids"].dtype == torch.int64


def test_float16_and_bfloat16_caches(tiny_causal_dir, text_corpus, tmp_path, causal_cache) -> None:
    ref = _all_rows(causal_cache, HOOKS)
    for name, dt in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        out = harvest(_cfg(tiny_causal_dir, text_corpus, tmp_path / name, dtype=name, tokens=500))
        rows = _all_rows(out, HOOKS)
        n = rows["token_ids"].shape[0]
        assert rows[HOOKS[0]].dtype == dt
        torch.testing.assert_close(rows[HOOKS[0]].float(), ref[HOOKS[0]][:n], rtol=1e-2, atol=1e-2)


def test_rows_align_with_a_direct_forward_pass(causal_cache: Path, tiny_causal_dir: Path) -> None:
    """Row i's activation is the model's activation at the token stored in row i, in its context."""
    from transformers import AutoModelForCausalLM

    lm = load_model(str(tiny_causal_dir))
    hf = AutoModelForCausalLM.from_pretrained(tiny_causal_dir).eval()
    rows = _all_rows(causal_cache, HOOKS)
    bos = lm.prefix_ids
    assert bos == (lm.tokenizer.bos_token_id,)
    for ctx in (0, 7, int(rows["context_ids"].max())):
        sel = rows["context_ids"] == ctx
        pos = rows["positions"][sel].long()
        ids = torch.full((32,), lm.pad_id, dtype=torch.long)
        ids[0] = bos[0]
        ids[pos] = rows["token_ids"][sel].long()
        with torch.no_grad():
            _, cache = lm.bridge.run_with_cache(ids[None], names_filter=list(HOOKS))
            hs = hf(ids[None], output_hidden_states=True).hidden_states
        for layer, h in enumerate(HOOKS):
            torch.testing.assert_close(rows[h][sel], cache[h][0, pos], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(rows[h][sel], hs[layer + 1][0, pos], rtol=1e-4, atol=1e-4)


def test_bos_and_padding_are_never_stored(causal_cache: Path, tiny_causal_dir: Path) -> None:
    rows = _all_rows(causal_cache, HOOKS)
    assert int(rows["positions"].min()) == 1  # position 0 holds BOS, never stored
    per_ctx = torch.bincount(rows["context_ids"])
    assert bool((per_ctx[:-1] == 31).all())  # every full context keeps its 31 non-BOS positions
    # the text itself is what the tokenizer makes of the documents, in order
    lm_tok = load_model(str(tiny_causal_dir)).tokenizer
    first = rows["token_ids"][rows["context_ids"] == 0].tolist()
    assert lm_tok.bos_token_id not in first


def test_masked_lm_drops_cls_and_sep(tiny_masked_dir, text_corpus, tmp_path) -> None:
    out = harvest(_cfg(tiny_masked_dir, text_corpus, tmp_path / "bert", hooks=("blocks.1.hook_resid_post",), tokens=400))
    rows = _all_rows(out, ("blocks.1.hook_resid_post",))
    assert int(rows["positions"].min()) == 1 and int(rows["positions"].max()) == 30  # 0 = CLS, 31 = SEP
    lm = load_model(str(tiny_masked_dir))
    sel = rows["context_ids"] == 1
    ids = torch.tensor([lm.tokenizer.cls_token_id] + rows["token_ids"][sel].tolist() + [lm.tokenizer.sep_token_id])
    with torch.no_grad():
        _, cache = lm.bridge.run_with_cache(ids[None], names_filter=["blocks.1.hook_resid_post"])
    torch.testing.assert_close(rows["blocks.1.hook_resid_post"][sel], cache["blocks.1.hook_resid_post"][0, 1:31],
                               rtol=1e-5, atol=1e-5)
    # and a separately loaded HF model (the bridged one's own hidden_states are not reliable after boot)
    from transformers import BertForMaskedLM

    hf = BertForMaskedLM.from_pretrained(tiny_masked_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        hs = hf(ids[None], output_hidden_states=True).hidden_states
    torch.testing.assert_close(rows["blocks.1.hook_resid_post"][sel], hs[2][0, 1:31], rtol=1e-4, atol=1e-4)


def test_multi_hook_pass_equals_single_hook_passes(causal_cache, tiny_causal_dir, text_corpus, tmp_path) -> None:
    both = _all_rows(causal_cache, HOOKS)
    for h in HOOKS:
        single = _all_rows(harvest(_cfg(tiny_causal_dir, text_corpus, tmp_path / h, hooks=(h,))), (h,))
        assert torch.equal(single[h], both[h])
        assert torch.equal(single["token_ids"], both["token_ids"])


def test_second_run_of_a_finished_harvest_changes_nothing(causal_cache, tiny_causal_dir, text_corpus) -> None:
    before = {p.name: p.read_bytes() for p in causal_cache.iterdir()}
    harvest(_cfg(tiny_causal_dir, text_corpus, causal_cache))
    assert {p.name: p.read_bytes() for p in causal_cache.iterdir()} == before


def test_a_different_harvest_into_the_same_directory_is_refused(causal_cache, tiny_causal_dir, text_corpus) -> None:
    with pytest.raises(WorkbenchError, match="already holds a different harvest"):
        harvest(_cfg(tiny_causal_dir, text_corpus, causal_cache, seed=5))


def test_unknown_hook_lists_the_valid_ones(tiny_causal_dir, text_corpus, tmp_path) -> None:
    with pytest.raises(WorkbenchError, match=r"blocks\.7\.hook_resid_post.*blocks\.\{0\.\.2\}\.hook_resid_post"):
        harvest(_cfg(tiny_causal_dir, text_corpus, tmp_path / "x", hooks=("blocks.7.hook_resid_post",)))
    assert not (tmp_path / "x").exists()  # nothing written for a bad request


def test_unknown_model_and_corpus_are_named(tiny_causal_dir, text_corpus, tmp_path) -> None:
    with pytest.raises(WorkbenchError, match=r"unknown model 'no-such/model'.*smollm2-135m"):
        harvest(_cfg("no-such/model", text_corpus, tmp_path / "m"))
    with pytest.raises(WorkbenchError, match=r"unknown corpus 'no-such/corpus'.*wiki-vital"):
        harvest(_cfg(tiny_causal_dir, "no-such/corpus", tmp_path / "c"))
    with pytest.raises(WorkbenchError, match=r"no field 'body'.*\['text', 'topic'\]"):
        harvest(_cfg(tiny_causal_dir, text_corpus, tmp_path / "f", text_field="body"))


def test_a_harvest_too_big_for_the_disk_is_refused_before_it_starts(tiny_causal_dir, text_corpus, tmp_path) -> None:
    with pytest.raises(WorkbenchError, match=r"needs about .* GiB .* only .* GiB is free"):
        harvest(_cfg(tiny_causal_dir, text_corpus, tmp_path / "big", tokens=10**14))


def test_a_cache_of_another_format_version_is_refused(causal_cache, tmp_path) -> None:
    import shutil

    old = tmp_path / "old"
    shutil.copytree(causal_cache, old)
    m = json.loads((old / "manifest.json").read_text())
    m["format_version"] = FORMAT_VERSION + 1
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(WorkbenchError, match=rf"format version {FORMAT_VERSION + 1}.*reads version {FORMAT_VERSION}"):
        CacheReader(old)


def test_text_and_jsonl_files_and_the_offline_corpus(tiny_causal_dir, text_corpus, tmp_path) -> None:
    txt = tmp_path / "txt"
    txt.mkdir()
    for i, line in enumerate(text_corpus.read_text().splitlines()[:20]):
        (txt / f"{i}.txt").write_text(json.loads(line)["text"])
    for corpus in (txt, "wiki-vital"):
        out = harvest(_cfg(tiny_causal_dir, corpus, tmp_path / f"o{len(str(corpus))}", tokens=300))
        assert CacheReader(out).num_tokens >= 300


def test_sae_hooks_lists_the_models_hook_points(tiny_causal_dir, capsys) -> None:
    from workbench.cli import main

    assert main(["hooks", str(tiny_causal_dir), "--filter", "resid_post"]) == 0
    assert capsys.readouterr().out.split() == [f"blocks.{i}.hook_resid_post" for i in range(3)]


def test_streamed_corpus_is_seeded_and_keeps_document_indices(tiny_causal_dir, text_corpus, tmp_path) -> None:
    """The streaming path hub datasets take, run on a local file: same order for the same seed."""
    from harvesting.corpus import open_documents

    a = [d.index for d in open_documents(str(text_corpus), seed=3, streaming=True)]
    assert a == [d.index for d in open_documents(str(text_corpus), seed=3, streaming=True)]
    assert a != [d.index for d in open_documents(str(text_corpus), seed=4, streaming=True)]
    assert sorted(a) == list(range(300))  # every document once, with its index in the file
    texts = [json.loads(line)["text"] for line in text_corpus.read_text().splitlines()]
    first = next(open_documents(str(text_corpus), seed=3, streaming=True))
    assert first.text == texts[first.index]
    out = [harvest(_cfg(tiny_causal_dir, text_corpus, tmp_path / f"s{i}", streaming=True, tokens=400)) for i in range(2)]
    assert [p.read_bytes() for p in sorted(out[0].iterdir())] == [p.read_bytes() for p in sorted(out[1].iterdir())]


def test_a_cache_from_before_a_new_config_field_is_still_recognised(causal_cache, tiny_causal_dir, text_corpus) -> None:
    m = json.loads((causal_cache / "manifest.json").read_text())
    del m["config"]["streaming"]  # as written before the field existed
    (causal_cache / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    before = {p.name: p.read_bytes() for p in causal_cache.iterdir()}
    harvest(_cfg(tiny_causal_dir, text_corpus, causal_cache))  # recognised as finished: nothing rewritten
    assert {p.name: p.read_bytes() for p in causal_cache.iterdir()} == before
