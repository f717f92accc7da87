"""Worker: SAEBench's own core evaluation of one SAELens-format SAE on given tokens; runs in its venv.

Started by `saebench_parity.py` with a JSON job file; writes a JSON result. Nothing here is
imported by the workbench, and nothing of the workbench is imported here: the SAE arrives as the
files our SAELens export wrote, the model as the offline .gguf, the tokens as a safetensors tensor.

The workarounds that make SAEBench 0.6.0 run offline (EVALS_AND_STEERING.md, "Running SAEBench's
own code offline"):
- TransformerLens 3 refuses SmolLM2 by name and a GGUF-quantised config: the model is loaded with
  transformers from the .gguf, its quantization_config dropped, its config saved to a folder whose
  name lacks "llama", and a `HookedTransformer` built from that config with no weight processing.
- The CLI fetches model and dataset by hub name: `run_evals` is called directly, with an
  `ActivationsStore.from_sae` over a local `datasets.Dataset` of `input_ids` rows (pretokenized
  rows are yielded as they are, in order: SAELens adds no BOS and reshuffles nothing).
- SAEBench's activation store is wrapped to record the tokens of every batch it hands out, so the
  parity script can check both sides scored the very same tokens.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path


def load_model(gguf: Path, device: str = "cpu"):
    import torch
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as lfp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    hf.eval()
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    if not getattr(hf.config, "architectures", None):  # a config built from a .gguf lacks it; TL reads it
        hf.config.architectures = [type(hf).__name__]
    cfg_dir = Path(tempfile.mkdtemp(prefix="smol-cfg-"))  # no "llama" in the name: TL reads names
    hf.config.save_pretrained(str(cfg_dir))
    cfg = lfp.get_pretrained_model_config(str(cfg_dir), fold_ln=False, device=device, dtype=torch.float32)
    model = HookedTransformer(cfg, tok)
    state = lfp.get_pretrained_state_dict(str(cfg_dir), cfg, hf, dtype=torch.float32)
    model.load_state_dict(state, strict=False)
    model.to(device).eval()
    return model, hf, tok


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    t0 = time.perf_counter()
    import torch
    from datasets import Dataset
    from safetensors.torch import load_file, save_file

    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    import importlib.metadata as md

    from sae_bench.evals.core.eval_config import CoreEvalConfig
    from sae_bench.evals.core.main import run_evals
    from sae_bench.sae_bench_utils.general_utils import load_and_format_sae
    from sae_lens import SAE
    from sae_lens.training.activations_store import ActivationsStore

    out: dict = {"versions": {p: md.version(p) for p in ("sae-bench", "sae-lens", "transformer-lens", "torch",
                                                          "transformers")}}
    model, hf, tok = load_model(Path(job["gguf"]))
    rows = load_file(job["tokens"])["input_ids"]
    # The model as SAEBench runs it against transformers' own logits on one context (TL conversion check).
    probe = rows[:1]
    tl_logits = model(probe, return_type="logits")
    hf_logits = hf(probe).logits
    out["tl_vs_hf_max_logit_diff"] = float((tl_logits - hf_logits).abs().max())
    out["load_seconds"] = time.perf_counter() - t0
    print(f"model loaded in {out['load_seconds']:.0f}s; TL vs transformers max logit diff "
          f"{out['tl_vs_hf_max_logit_diff']:.2e}", flush=True)

    sae = SAE.load_from_disk(job["sae_dir"], device="cpu")  # SAELens's own loader, on our export
    _, sae, _ = load_and_format_sae("custom", sae, "cpu")
    sae.eval()
    out["sae_class"] = type(sae).__name__
    out["sae_metadata"] = {k: sae.cfg.metadata[k] for k in ("model_name", "hook_name", "context_size", "prepend_bos")}
    dataset = Dataset.from_dict({"input_ids": rows.tolist()})
    store = ActivationsStore.from_sae(model, sae, dataset=dataset, context_size=rows.shape[1],
                                      store_batch_size_prompts=job["batch_prompts"], device="cpu")
    seen: list[torch.Tensor] = []
    original = store.get_batch_tokens

    def recording(*a, **kw):
        t = original(*a, **kw)
        seen.append(t.detach().cpu().clone())
        return t

    store.get_batch_tokens = recording
    cfg = CoreEvalConfig(batch_size_prompts=job["batch_prompts"],
                         n_eval_reconstruction_batches=job["recon_batches"],
                         n_eval_sparsity_variance_batches=job["sparsity_batches"],
                         compute_kl=True, compute_ce_loss=True, compute_l2_norms=True,
                         compute_sparsity_metrics=True, compute_variance_metrics=True,
                         compute_featurewise_density_statistics=True,
                         compute_featurewise_weight_based_metrics=False,
                         exclude_special_tokens_from_reconstruction=job["exclude_special"])
    t1 = time.perf_counter()
    metrics, features = run_evals(sae=sae, activation_store=store, model=model, eval_config=cfg,
                                  ignore_tokens=set(job["ignore_tokens"]), verbose=True)
    out["eval_seconds"] = time.perf_counter() - t1
    out["metrics"] = metrics
    out["feature_density"] = features["feature_density"]
    r = job["recon_batches"]
    save_file({"recon": torch.cat(seen[:r]).contiguous(), "sparsity": torch.cat(seen[r:]).contiguous()},
              job["seen_tokens"])
    Path(job["out"]).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
