"""The output score (Arad et al. 2025) ranks first a planted feature whose decoder row is a token's
unembedding direction: added at the neutral prompt's last position, it makes that token, its own
logit-lens token, the most likely next token."""

from __future__ import annotations

import pytest
import torch

from steering.selection.output import lens_tokens, os_from_probs, output_scores

from .conftest import HOOK


@pytest.fixture(scope="module")
def peaked():
    """A tiny random Llama (width 64) whose unembedding is scaled up so that, like a trained model's,
    its next-token distribution can peak (the shared fixture's random head gives p ~ 1/|V| for every
    input, where no score can tell features apart), and a random TopK SAE at one of its hooks."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from saes import SAEConfig, build_sae
    from workbench.models import from_hf_model, offline_path

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(offline_path("minilm-l6")))
    tok.bos_token, tok.eos_token = "[CLS]", "[SEP]"
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    hf = LlamaForCausalLM(cfg)
    with torch.no_grad():
        hf.lm_head.weight.mul_(20.0)
    lm = from_hf_model(hf, tok, model_id="tiny-llama-64")
    sae = build_sae(SAEConfig("topk", d_in=64, num_features=64, k=6, hook=HOOK, model_id="tiny-llama-64"),
                    generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        sae.b_enc.fill_(0.5)
    return lm, sae.eval()


@pytest.mark.parametrize("feature,token", [(17, 2054), (3, 5000), (60, 12000)])
def test_a_planted_unembedding_feature_ranks_first(peaked, feature, token):
    from evals.features.lens import load_unembedding

    lm, sae = peaked
    keep = sae.W_dec[feature].clone()
    d = load_unembedding(lm)[:, token]
    try:
        with torch.no_grad():
            sae.W_dec[feature] = d / d.norm()  # the same norm as every other (unit) decoder row
        assert int(lens_tokens(lm, sae, torch.tensor([feature]))[0, 0]) == token
        got = output_scores(lm, sae, batch_size=16)
    finally:
        with torch.no_grad():
            sae.W_dec[feature] = keep
    assert got.features.tolist() == list(range(sae.num_features))
    assert int(got.output.argmax()) == feature
    assert got.output[feature] > 0.5 > float(got.output.median())
    assert got.coeff > 0


def test_output_score_formula_against_a_direct_reading():
    """OS = (1 - min rank / |V|) * max p over T_j, ranks counted from 0 by sorting the distribution."""
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(3, 50, generator=g) * 3, -1)
    t = torch.randint(0, 50, (3, 4), generator=g)
    ref = []
    for row, toks in zip(p, t):
        order = row.argsort(descending=True).tolist()
        ranks = [order.index(int(x)) for x in toks]
        ref.append((1 - min(ranks) / 50) * max(float(row[x]) for x in toks))
    torch.testing.assert_close(os_from_probs(p, t), torch.tensor(ref))


def test_concept_target_probability_is_the_steered_next_token_mass(tiny_lm, tiny_sae):
    from steering import Positions, add_feature
    from steering.reading import encode_texts

    targets = [2054, 3000]
    got = output_scores(tiny_lm, tiny_sae, [5, 9], targets=targets)
    b = encode_texts(tiny_lm, ["From my experience,"])
    for i, f in enumerate((5, 9)):
        from steering.interventions import steering

        iv = add_feature(tiny_sae, f, got.coeff, positions=Positions("last"))
        with torch.no_grad(), steering(tiny_lm, [iv], prompt_len=b.tokens.shape[1]):
            p = torch.softmax(tiny_lm.bridge(b.tokens)[0, -1].float(), -1)
        torch.testing.assert_close(got.target_prob[i], p[targets].sum(), atol=1e-5, rtol=1e-4)


def test_the_kv_cached_prefix_gives_the_same_scores_as_rerunning_the_prompt(tiny_lm, tiny_sae):
    a = output_scores(tiny_lm, tiny_sae, [1, 5, 9, 40], targets=[2054, 3000], batch_size=3)
    b = output_scores(tiny_lm, tiny_sae, [1, 5, 9, 40], targets=[2054, 3000], batch_size=3, use_cache=False)
    torch.testing.assert_close(a.output, b.output, atol=1e-7, rtol=1e-4)
    torch.testing.assert_close(a.target_prob, b.target_prob, atol=1e-7, rtol=1e-4)
