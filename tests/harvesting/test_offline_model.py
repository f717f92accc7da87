"""The real offline default model end to end: SmolLM2-135M from its GGUF file over wiki-vital."""

from __future__ import annotations

import pytest
import torch

from harvesting import CacheReader, HarvestConfig, harvest, load_model

pytestmark = pytest.mark.integration
HOOK = "blocks.3.hook_resid_post"


def test_smollm2_harvest_matches_the_hugging_face_forward(tmp_path) -> None:
    lm = load_model("smollm2-135m")
    assert (lm.n_layers, lm.d_model) == (30, 576)
    assert lm.prefix_ids == (lm.tokenizer.bos_token_id,)
    out = harvest(HarvestConfig(hooks=(HOOK,), tokens=600, context_length=64, batch_size=4, out=str(tmp_path / "a"),
                                progress=False), model=lm)
    r = CacheReader(out)
    rows = r.load_shard(0)
    assert r.num_tokens >= 600 and r.manifest["model"]["id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    sel = rows["context_ids"] == 1
    ids = torch.cat([torch.tensor(lm.prefix_ids), rows["token_ids"][sel].long()])[None]
    hf = lm.bridge.original_model
    with torch.no_grad():
        hs = hf(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(rows[HOOK][sel], hs[4][0, 1:], rtol=1e-4, atol=1e-3)
    # the text is real English: decoding the stored ids gives words from the articles
    text = lm.tokenizer.decode(rows["token_ids"][sel].tolist())
    assert len(text.split()) > 20


def test_minilm_masked_encoder_harvest(tmp_path) -> None:
    lm = load_model("minilm-l6")
    assert (lm.n_layers, lm.d_model) == (6, 384) and lm.modality == "text"
    assert lm.prefix_ids == (lm.tokenizer.cls_token_id,) and lm.suffix_ids == (lm.tokenizer.sep_token_id,)
    out = harvest(HarvestConfig(model="minilm-l6", hooks=("blocks.5.hook_resid_post",), tokens=300, context_length=64,
                                batch_size=4, out=str(tmp_path / "m"), progress=False), model=lm)
    rows = CacheReader(out).load_shard(0)
    assert int(rows["positions"].min()) == 1 and int(rows["positions"].max()) == 62  # CLS and SEP dropped
    assert rows["blocks.5.hook_resid_post"].shape[1] == 384
