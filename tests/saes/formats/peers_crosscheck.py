"""Cross-check saes.formats against the real SAELens and sparsify (neither is a dependency).

Not collected by pytest (no test_ prefix); run by hand after installing the two libraries into a
scratch folder, never into the project's environment:

    .venv/bin/python -m pip install --no-deps --target /tmp/peers sae-lens==6.54.12 eai-sparsify==1.3.3 \
        "transformer-lens>=2.16.1,<3" simple-parsing natsort schedulefree plotly plotly-express babe nltk \
        python-dotenv tenacity jaxtyping fancy-einsum better-abc beartype typeguard wadler-lindig docstring-parser
    PYTHONPATH=/tmp/peers .venv/bin/python tests/saes/formats/peers_crosscheck.py

Files each library saves load here with its outputs; files exported here load in each library
with our outputs. Prints the largest difference per case (float32) and fails above 1e-4.
"""
import tempfile, torch
from pathlib import Path
import sae_lens
from sae_lens import SAE
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE as SLTopK, TopKSAEConfig, JumpReLUSAE as SLJ, JumpReLUSAEConfig, GatedSAE, GatedSAEConfig
from sparsify import SparseCoder, SparseCoderConfig
from saes import SAEConfig, build_sae
from saes.formats import load_any, export_saelens, export_sparsify

torch.manual_seed(0)
D, F = 16, 64
x = torch.randn(200, D)
tmp = Path(tempfile.mkdtemp())
print("sae_lens", sae_lens.__version__)

def randomize(m):
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n == "threshold": p.copy_(torch.rand_like(p) * 0.3)
            elif n.startswith("W"): p.copy_(torch.randn_like(p) / D**0.5)
            else: p.copy_(torch.randn_like(p) * 0.2)

def ours_out(sae, x):
    c = sae.encode(x); return c.to_dense(), sae.decode(c)

def cmp(name, a, b):
    fa, xa = a; fb, xb = b
    df = (fa - fb).abs().max().item(); dx = (xa - xb).abs().max().item()
    print(f"{name:40s} max|codes diff| {df:.2e}  max|recon diff| {dx:.2e}  active {(fa>0).float().sum(1).mean():.1f}")
    assert df < 1e-4 and dx < 1e-4, name

cases = [
    ("standard", StandardSAE(StandardSAEConfig(d_in=D, d_sae=F))),
    ("standard no b_dec", StandardSAE(StandardSAEConfig(d_in=D, d_sae=F, apply_b_dec_to_input=False))),
    ("topk", SLTopK(TopKSAEConfig(d_in=D, d_sae=F, k=8))),
    ("topk rescale", SLTopK(TopKSAEConfig(d_in=D, d_sae=F, k=8, rescale_acts_by_decoder_norm=True))),
    ("jumprelu", SLJ(JumpReLUSAEConfig(d_in=D, d_sae=F))),
    ("gated", GatedSAE(GatedSAEConfig(d_in=D, d_sae=F))),
    ("gated no b_dec", GatedSAE(GatedSAEConfig(d_in=D, d_sae=F, apply_b_dec_to_input=False))),
]
for name, m in cases:
    randomize(m); m.eval()
    d = tmp / name.replace(" ", "_"); m.save_model(str(d))
    with torch.no_grad():
        f = m.encode(x); ref = (f, m.decode(f))
    cmp("SAELens -> ours: " + name, ref, ours_out(load_any(d), x))

for arch, kw in [("topk", {}), ("relu", {}), ("jumprelu", {}), ("batchtopk", {}), ("feature_choice", {})]:
    sae = build_sae(SAEConfig(architecture=arch, d_in=D, num_features=F, k=8, hook="blocks.1.hook_resid_post"))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.2); sae.b_dec.normal_(0, 0.2)
        if "threshold" in sae.weight_tensors():
            sae.load_weight_tensors({**sae.weight_tensors(), "threshold": torch.rand(F) * 0.3})
    d = export_saelens(sae, tmp / f"ours_{arch}")
    m = SAE.load_from_disk(str(d))
    with torch.no_grad():
        f = m.encode(x); ref = (f, m.decode(f))
    cmp(f"ours -> SAELens {type(m).__name__}: {arch}", ours_out(sae, x), ref)

# sparsify
sc = SparseCoder(D, SparseCoderConfig(k=8, num_latents=F))
randomize(sc); sc.save_to_disk(tmp / "sp_run" / "layers.3")
with torch.no_grad():
    e = sc.encode(x); f = torch.zeros(x.shape[0], F).scatter(1, e.top_indices, e.top_acts)
    ref = (f, f @ sc.W_dec + sc.b_dec)  # sparsify eager_decode (its triton decode needs a GPU)
got = load_any(tmp / "sp_run" / "layers.3"); assert got.cfg.hook == "blocks.3.hook_resid_post"
cmp("sparsify -> ours", ref, ours_out(got, x))
sae = build_sae(SAEConfig(architecture="topk", d_in=D, num_features=F, k=8, hook="blocks.5.hook_mlp_out"))
with torch.no_grad(): sae.b_enc.normal_(0, 0.2); sae.b_dec.normal_(0, 0.2)
export_sparsify(sae, tmp / "out_run")
many = SparseCoder.load_many(str(tmp / "out_run"), local=True)
print("sparsify load_many keys:", list(many))
sc = many["layers.5.mlp"]
with torch.no_grad():
    e = sc.encode(x); f = torch.zeros(x.shape[0], F).scatter(1, e.top_indices, e.top_acts)
    ref = (f, f @ sc.W_dec + sc.b_dec)  # sparsify eager_decode (its triton decode needs a GPU)
cmp("ours -> sparsify", ours_out(sae, x), ref)

# SAELens training SAEs: BatchTopK saved for inference (as jumprelu) and as a training checkpoint
# (architecture batchtopk, topk_threshold, selection on pre * |W_dec row|).
from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

m = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D, d_sae=F, k=8))
randomize(m)
m.topk_threshold = torch.tensor(0.15, dtype=torch.double)
m.eval()
m.save_inference_model(str(tmp / "btk_inference"))
inf = SAE.load_from_disk(str(tmp / "btk_inference"))
with torch.no_grad():
    f = inf.encode(x); ref = (f, inf.decode(f))
cmp("SAELens batchtopk (inference save) -> ours", ref, ours_out(load_any(tmp / "btk_inference"), x))
m.save_model(str(tmp / "btk_checkpoint"))
cmp("SAELens batchtopk (checkpoint) -> ours", ref, ours_out(load_any(tmp / "btk_checkpoint"), x))
print("ALL OK")
