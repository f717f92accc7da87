"""Concept crystals and the brain/galaxy-scale claims of "The Geometry of Concepts" (Li, Michaud, Tegmark
et al. 2024) on the offline model.

1. Crystals. Six relations of word pairs (gender, country-capital, singular-plural, present-past,
   comparative, English-French; 15 pairs each), each word read alone at its last token (the paper's
   setup) at several resid_post layers of smollm2-135m. Per relation: are the pair differences
   parallel (mean pairwise cosine against shuffled partners), do analogies a:b::c:d hold (d nearest
   to b - a + c among all the words), parallelograms or trapezoids (median side-length ratio)?
   Across relations: held-out silhouette of the relation labels of the differences raw, after PCA
   and after LDA (k-fold; shuffled-label null), and how much of the word-length difference
   (characters) the differences and their LDA projection encode (cross-validated ridge R^2).
2. Lobes. Co-occurrence lobes vs decoder-geometry clusters of the quickstart SAE's features
   (256-token chunks from its feature build), swept over cluster counts, each with a permutation null.
3. Galaxy. Spectrum slope (bootstrap interval over features) and clustering entropy (excess over a
   matched Gaussian, subsample interval) for each SAE given (layers 4 and 8, trained with one recipe).

    python benchmarks/geometry_crystals.py --out /tmp/geometry/crystals
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

RELATIONS = {
    "gender": [("man", "woman"), ("king", "queen"), ("boy", "girl"), ("father", "mother"), ("brother", "sister"),
               ("son", "daughter"), ("husband", "wife"), ("uncle", "aunt"), ("prince", "princess"), ("he", "she"),
               ("actor", "actress"), ("nephew", "niece"), ("grandfather", "grandmother"), ("gentleman", "lady"),
               ("waiter", "waitress")],
    "country-capital": [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
                        ("Japan", "Tokyo"), ("China", "Beijing"), ("Russia", "Moscow"), ("Egypt", "Cairo"),
                        ("England", "London"), ("Greece", "Athens"), ("Canada", "Ottawa"), ("Austria", "Vienna"),
                        ("Poland", "Warsaw"), ("Portugal", "Lisbon"), ("Ireland", "Dublin")],
    "singular-plural": [("cat", "cats"), ("dog", "dogs"), ("house", "houses"), ("child", "children"), ("mouse", "mice"),
                        ("book", "books"), ("tree", "trees"), ("car", "cars"), ("foot", "feet"), ("city", "cities"),
                        ("box", "boxes"), ("woman", "women"), ("tooth", "teeth"), ("leaf", "leaves"), ("bird", "birds")],
    "present-past": [("go", "went"), ("see", "saw"), ("eat", "ate"), ("run", "ran"), ("take", "took"), ("give", "gave"),
                     ("write", "wrote"), ("walk", "walked"), ("play", "played"), ("jump", "jumped"), ("come", "came"),
                     ("make", "made"), ("speak", "spoke"), ("drink", "drank"), ("sing", "sang")],
    "comparative": [("big", "bigger"), ("small", "smaller"), ("fast", "faster"), ("tall", "taller"), ("old", "older"),
                    ("young", "younger"), ("strong", "stronger"), ("cold", "colder"), ("hot", "hotter"),
                    ("long", "longer"), ("short", "shorter"), ("happy", "happier"), ("easy", "easier"),
                    ("high", "higher"), ("low", "lower")],
    "english-french": [("dog", "chien"), ("cat", "chat"), ("house", "maison"), ("water", "eau"), ("bread", "pain"),
                       ("book", "livre"), ("red", "rouge"), ("black", "noir"), ("sun", "soleil"), ("moon", "lune"),
                       ("king", "roi"), ("woman", "femme"), ("apple", "pomme"), ("car", "voiture"), ("tree", "arbre")],
}


def r4(x):
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, dict):
        return {k: r4(v) for k, v in x.items()}
    if isinstance(x, list):
        return [r4(v) for v in x]
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/geometry/crystals")
    ap.add_argument("--layers", type=int, nargs="+", default=[0, 4, 8, 16, 24])
    ap.add_argument("--permutations", type=int, default=2000)
    ap.add_argument("--shuffles", type=int, default=50, help="shuffled-label LDA silhouettes per layer")
    ap.add_argument("--lobe-sae", default="cache/quickstart/saes")
    ap.add_argument("--lobe-ks", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64])
    ap.add_argument("--lobe-shuffles", type=int, default=200)
    ap.add_argument("--lobe-features", type=int, default=0, help="only the N features that fire in the most chunks (0 = all)")
    ap.add_argument("--galaxy-sae", nargs="+", default=[
        "layer4=cache/geometry/saes-layers/blocks.4.hook_resid_post/topk-k32-x8",
        "layer8=cache/geometry/saes-layers/blocks.8.hook_resid_post/topk-k32-x8",
        "quickstart8=cache/quickstart/saes", "wiki1m8=cache/saes/wiki-1m-topk"])
    ap.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples of the spectrum slope")
    ap.add_argument("--repeats", type=int, default=20, help="subsamples for the clustering-entropy interval")
    ap.add_argument("--parts", nargs="+", default=["crystals", "lobes", "galaxy"])
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    report["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    report["args"] = vars(args)
    t0 = time.time()

    from evals.geometry import (clustering_entropy, distractor_r2, heldout_silhouette, lobe_sweep, pair_differences,
                                parallelogram_test, spectrum_slope_interval)

    if "crystals" in args.parts:
        from evals.geometry.words import last_token_activations
        from workbench.models import load_model

        lm = load_model("smollm2-135m")
        words = sorted({w for pairs in RELATIONS.values() for p in pairs for w in p})
        hooks = [f"blocks.{layer}.hook_resid_post" for layer in args.layers]
        acts = last_token_activations(lm, words, hooks)
        ntok = {w: len(lm.tokenizer.encode(w, add_special_tokens=False)) for w in words}
        length = np.array([len(b) - len(a) for pairs in RELATIONS.values() for a, b in pairs], float)
        crystals = {"words": len(words), "pairs": int(len(length)),
                    "multi_token_words": sorted(w for w in words if ntok[w] > 1)}
        for h in hooks:
            vec = {w: acts[h][i] for i, w in enumerate(words)}
            per_rel = {name: parallelogram_test(vec, pairs, permutations=args.permutations, seed=0)
                       for name, pairs in RELATIONS.items()}
            diffs, labels, _ = pair_differences(vec, RELATIONS)
            sil = {m: heldout_silhouette(diffs, labels, method=m, n_components=5, seed=0,
                                         shuffles=args.shuffles if m == "lda" else 0) for m in ("raw", "pca", "lda")}
            sil["lda_shrinkage"] = heldout_silhouette(diffs, labels, method="lda", n_components=5, seed=0, shrinkage=True)
            lda_all = sil["lda"]["projected"]
            entry = {"relations": per_rel,
                     "silhouette": {m: {k: v for k, v in s.items() if k != "projected"} for m, s in sil.items()},
                     "length_r2_raw": distractor_r2(diffs, length),
                     "length_r2_pca5": distractor_r2(sil["pca"]["projected"], length),
                     "length_r2_lda": distractor_r2(lda_all, length)}
            crystals[h] = entry
            print(h, {n: (round(r["mean_cos"], 3), round(r["null_mean_cos"], 3), r["p_value"], round(r["analogy_top1"], 2))
                      for n, r in per_rel.items()}, {m: round(s["silhouette"], 3) for m, s in sil.items()},
                  "null", round(sil["lda"].get("null_mean", float("nan")), 3), sil["lda"].get("p_value"),
                  "length r2", round(entry["length_r2_raw"], 3), round(entry["length_r2_lda"], 3), flush=True)
            report["crystals"] = r4(crystals)
            report_path.write_text(json.dumps(report, indent=1))

    if "lobes" in args.parts:
        from evals.features.store import FeatureData
        from saes import load_sae
        from saes.storage import resolve_sae_dir

        sae = load_sae(args.lobe_sae)
        fd = FeatureData(resolve_sae_dir(args.lobe_sae) / "features")
        co = fd.cooccurrence()
        t1 = time.time()
        cooc, tracked = co["cooc"], co["tracked"]
        if args.lobe_features:
            top = torch.argsort(torch.diagonal(cooc), descending=True)[:args.lobe_features]
            cooc, tracked = cooc[top][:, top], tracked[top]
        rows = lobe_sweep(cooc, int(co["chunks"][0]), sae.W_dec.detach().float(), tracked, args.lobe_ks,
                          shuffles=args.lobe_shuffles, seed=0)
        report["lobes"] = {"sae": args.lobe_sae, "chunks": int(co["chunks"][0]), "chunk_tokens": int(co["chunk_tokens"][0]),
                           "features_used": args.lobe_features or int(len(co["tracked"])),
                           "sweep": r4(rows)}
        print("lobes", rows, f"{time.time() - t1:.0f}s", flush=True)
        report_path.write_text(json.dumps(report, indent=1))

    if "galaxy" in args.parts:
        from saes import load_sae

        gal = {}
        for spec in args.galaxy_sae:
            tag, path = spec.split("=", 1)
            w = load_sae(path).W_dec.detach().float()
            s = spectrum_slope_interval(w, skip=1, tail=0.1, bootstrap=args.bootstrap, seed=0)
            c = clustering_entropy(w.numpy(), n_components=100, k=1, repeats=args.repeats, seed=0)
            gal[tag] = {"path": path, "features": int(w.shape[0]), "slope": s, "clustering": c}
            print(tag, r4(gal[tag]), flush=True)
            report["galaxy"] = r4(gal)
            report_path.write_text(json.dumps(report, indent=1))
    print(f"done in {time.time() - t0:.0f}s -> {report_path}")


if __name__ == "__main__":
    main()
