"""Irreducible multi-dimensional features (Engels et al. 2024) on the offline model: are the days of the
week and the months of the year laid out on circles, first in the raw residual stream and then in the
reconstructions of SAE clusters found by the paper's clusterings?

1. Raw activations. Day and month words in templated sentences (20 templates each), read at the word
   (smollm2-135m, resid_post of the --layers). Class means on the top-2 PCs of all points, and on the
   top-2 PCs of the class means themselves: are they in calendar order around their centre
   (evals.geometry.cyclic_order_test, a permutation null over class labels), and how often over a
   bootstrap of templates? Separability and mixture indices on every plane of PCs 1-5.
2. SAE clusters (blocks.8 SAEs). Both clusterings of the paper: spectral clustering on the angular
   similarity of the decoder rows (F / 25 clusters: the paper's 1000 for 24576 features) and the
   top-2 neighbour graph (cosine > 0.5, pruned). The day (month) cluster is chosen by
   --cluster-select: `specificity` (default) takes the cluster with the highest lift = mean cluster
   activation mass per templated day (month) word / mean cluster mass per cache token, among clusters
   that fire on at least --min-coverage (0.5) of the templated words (evals.geometry.cluster_specificity);
   `mass` takes the cluster with the most activation mass on the templated words (the first run's
   choice). Specificity is the better-founded default: mass is dominated by dense generic clusters
   that fire on every token (on this SAE the mass pick fires on ",", "of", "and"), so it measures
   density, not the concept; the paper's day/month clusters are the ones that fire on those words and
   rarely elsewhere. The coverage floor keeps out tiny clusters that fire on a few day words only
   (their lift is huge because they never fire on the cache). Its reconstruction (sum of its features'
   contributions) on the templated words (cyclic order of class means) and on the first 100k cache
   tokens (both indices on every plane of PCs 1-5, radius filter); where the cluster's PC1-2
   separability falls among all clusters of 2-60 features (the paper ranks clusters this way).

    python benchmarks/geometry_multidim.py --out /tmp/geometry/multidim
    python benchmarks/geometry_multidim.py --parts sae --sae quickstart=cache/quickstart/saes --out /tmp/multidim_spec
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

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
DAY_TEMPLATES = ["Let's meet on {}", "The party is on {}", "I will see you on {}", "She was born on a {}",
                 "Every {}", "The shop is closed on {}", "It happened last {}", "See you next {}",
                 "The meeting was moved to {}", "My favourite day is {}", "He works late every {}",
                 "The market opens on {}", "We arrived on {}", "The deadline is this {}", "On {}",
                 "Our flight leaves on {}", "The class takes place each {}", "They called me on {}",
                 "The game is on {}", "Today is {}"]
MONTH_TEMPLATES = ["The festival is held in {}", "She was born in {}", "It snowed in {}", "Every {}",
                   "The report is due in {}", "We moved here last {}", "The season starts in {}",
                   "The event took place in {}", "His birthday is in {}", "In {}", "The trip is planned for {}",
                   "The school year ends in {}", "Prices rose in {}", "The law was passed in {}",
                   "We met in early {}", "The album came out in {}", "The harvest begins in {}",
                   "It was a cold {}", "The store reopens in {}", "The month after this is {}"]


def sentences(words, templates):
    texts, labels, tmpl = [], [], []
    for t, template in enumerate(templates):
        for w in words:
            texts.append(template.format(w))
            labels.append(w)
            tmpl.append(t)
    return texts, np.array(labels), np.array(tmpl)


def class_means(x, labels, words):
    return np.stack([x[labels == w].mean(0) for w in words])


def top2(points, fit_on=None):
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2).fit(points if fit_on is None else fit_on)
    return pca.transform(points), pca.explained_variance_ratio_


def cyclic_summary(x, labels, tmpl, words, permutations, boot, seed=0):
    """Cyclic order of class means in two planes, with a template bootstrap of each."""
    from evals.geometry import cyclic_order_test

    out = {}
    rng = np.random.default_rng(seed)
    for plane in ("all_points", "class_means"):
        def stat(idx):
            xs, ls = x[idx], labels[idx]
            means = class_means(xs, ls, words)
            coords, _ = top2(means, fit_on=xs if plane == "all_points" else means)
            return coords
        coords = stat(np.arange(len(x)))
        res = cyclic_order_test(coords, permutations=permutations, seed=seed)
        t_ids = np.unique(tmpl)
        adj, cyc = [], []
        for _ in range(boot):
            pick = rng.choice(t_ids, len(t_ids), replace=True)
            idx = np.concatenate([np.flatnonzero(tmpl == t) for t in pick])
            r = cyclic_order_test(stat(idx), permutations=1)
            adj.append(r["adjacent"])
            cyc.append(r["in_cyclic_order"])
        out[plane] = {"adjacent": res["adjacent"], "classes": res["classes"], "in_cyclic_order": res["in_cyclic_order"],
                      "p_value": res["p_value"], "null_mean_adjacent": res["null_mean"],
                      "angular_order": [words[i] for i in res["angular_order"]],
                      "bootstrap_cyclic_fraction": float(np.mean(cyc)),
                      "bootstrap_adjacent_95": [float(np.percentile(adj, 2.5)), float(np.percentile(adj, 97.5))],
                      "coords": coords.tolist()}
    return out


def plane_rows(res):
    return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in res["planes"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/geometry/multidim")
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--sae", nargs="+", default=["quickstart=cache/quickstart/saes", "wiki1m=cache/saes/wiki-1m-topk"])
    ap.add_argument("--cache", default="cache/quickstart/acts")
    ap.add_argument("--cache-tokens", type=int, default=100_000)
    ap.add_argument("--permutations", type=int, default=10_000)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--per-cluster", type=int, default=25, help="spectral clusters = features / this")
    ap.add_argument("--parts", nargs="+", default=["raw", "sae"], choices=["raw", "sae"])
    ap.add_argument("--null-shuffles", type=int, default=100, help="separability null per raw plane")
    ap.add_argument("--cluster-select", default="specificity", choices=["specificity", "mass"],
                    help="how the day (month) cluster is chosen (see the docstring)")
    ap.add_argument("--min-coverage", type=float, default=0.5,
                    help="specificity: share of templated words the cluster must fire on")
    ap.add_argument("--radius", type=float, default=0.0, help="radius filter as a fraction of the median norm in the plane")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from evals.geometry import (cache_codes, cluster_specificity, clusters_as_lists, engels_graph_clusters, geometric_clusters,
                                plane_indices, plot_planes_by_token, reconstructions_from_codes, separability_null)
    from evals.geometry.words import last_token_activations, last_token_strings
    from saes import load_sae
    from workbench.models import load_model

    t0 = time.time()
    lm = load_model("smollm2-135m")
    hooks = sorted({f"blocks.{layer}.hook_resid_post" for layer in args.layers} | {"blocks.8.hook_resid_post"})
    concepts = {"days": (DAYS, DAY_TEMPLATES), "months": (MONTHS, MONTH_TEMPLATES)}
    data = {}
    for name, (words, templates) in concepts.items():
        texts, labels, tmpl = sentences(words, templates)
        lasts = last_token_strings(lm, texts)
        data[name] = {"acts": last_token_activations(lm, texts, hooks), "labels": labels, "tmpl": tmpl,
                      "single_token": sorted({w for w, s in zip(labels, lasts) if s.strip() == w})}
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": "python benchmarks/geometry_multidim.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
              "raw": {}, "sae": {}}
    print(f"activations read in {time.time() - t0:.0f}s", flush=True)

    np.savez_compressed(out / "activations.npz", **{f"{n}|{h}": d["acts"][h] for n, d in data.items() for h in hooks},
                        **{f"{n}|labels": d["labels"] for n, d in data.items()})
    # 1. raw activations
    for name, (words, _) in concepts.items():
        if "raw" not in args.parts:
            break
        d = data[name]
        for h in hooks:
            x = d["acts"][h]
            cyc = cyclic_summary(x, d["labels"], d["tmpl"], words, args.permutations, args.bootstrap)
            pi = plane_indices(x, 5)
            for row in pi["planes"]:
                xy = pi["coords"][:, [row["pc_a"] - 1, row["pc_b"] - 1]]
                nl = separability_null(xy, shuffles=args.null_shuffles, seed=0)
                row.update(separability_null_mean=nl["null_mean"], separability_null_95=nl["null_95"],
                           separability_p=nl["p_value"])
            report["raw"][f"{name}@{h}"] = {"n_points": len(x), "single_token_words": d["single_token"],
                                            "cyclic": cyc, "planes": plane_rows(pi),
                                            "explained_variance_ratio": pi["explained_variance_ratio"].round(4).tolist()}
            fig = plot_planes_by_token(pi["coords"], d["labels"], planes=[(1, 2), (2, 3), (1, 3)], order=words,
                                       indices=pi["planes"], title=f"{name}, raw {h}")
            fig.savefig(out / f"raw_{name}_{h}.png", dpi=110)
            print(name, h, {p: (c["adjacent"], c["p_value"], c["bootstrap_cyclic_fraction"]) for p, c in cyc.items()}, flush=True)

    # 2. SAE clusters at blocks.8
    h8 = "blocks.8.hook_resid_post"
    for spec in (args.sae if "sae" in args.parts else []):
        tag, path = spec.split("=", 1)
        sae = load_sae(path)
        w = sae.W_dec.detach().float()
        f = w.shape[0]
        t1 = time.time()
        spectral = clusters_as_lists(geometric_clusters(w, max(2, f // args.per_cluster), seed=0))
        graph = engels_graph_clusters(w, top_k=2, min_cos=0.5)
        codes = cache_codes(sae, args.cache, max_tokens=args.cache_tokens)
        print(tag, f"clusters and codes in {time.time() - t1:.0f}s; graph clusters {len(graph)}", flush=True)
        tok = lm.tokenizer
        for method, clusters in (("spectral", spectral), ("graph", graph)):
            # every cluster's PC1-2 separability on the cache: the distribution the paper ranks clusters by
            scan = []
            for c in clusters:
                if not 2 <= len(c) <= 60:
                    continue
                r = reconstructions_from_codes(codes, w, c)
                if len(r["recon"]) < 50:
                    continue
                pi = plane_indices(r["recon"][:20_000], 2, mixture_steps=90)
                scan.append((pi["planes"][0]["separability"], pi["planes"][0]["mixture"], c))
            seps = np.array([s for s, _, _ in scan])
            for name, (words, _) in concepts.items():
                d = data[name]
                x = d["acts"][h8]
                with torch.no_grad():
                    z = sae.encode_dense(torch.from_numpy(x)).numpy()
                sel = cluster_specificity(z, codes["codes"], clusters, min_coverage=args.min_coverage)
                mass = sel["mass"]
                best = int(mass.argmax()) if args.cluster_select == "mass" else sel["best"]
                ranked = np.argsort(-sel["score"] if args.cluster_select == "specificity" else -mass)[:5]
                candidates = [{"index": int(i), "size": len(clusters[i]), "lift": round(float(sel["lift"][i]), 3),
                               "coverage": round(float(sel["coverage"][i]), 3),
                               "mass_share": round(float(mass[i] / max(mass.sum(), 1e-9)), 4)} for i in ranked]
                if best is None:
                    report["sae"][f"{tag}/{method}/{name}"] = {"selection": args.cluster_select, "candidates": candidates,
                                                             "result": "no cluster passes the coverage floor"}
                    print(tag, method, name, "no cluster passes the coverage floor", flush=True)
                    continue
                members = clusters[best]
                zc = z[:, members]
                recon_t = zc @ w[members].numpy()
                fired = (zc > 0).any(1)
                entry = {"selection": args.cluster_select, "cluster_index": best, "cluster_size": len(members),
                         "members": members[:60], "share_of_templated_words_fired": float(fired.mean()),
                         "mass_share": float(mass[best] / max(mass.sum(), 1e-9)), "lift": float(sel["lift"][best]),
                         "candidates": candidates}
                if fired.sum() >= len(words) and all((fired & (d["labels"] == wd)).any() for wd in words):
                    entry["cyclic_templated"] = cyclic_summary(recon_t[fired], d["labels"][fired], d["tmpl"][fired], words,
                                                               args.permutations, args.bootstrap)
                else:
                    entry["cyclic_templated"] = "cluster does not fire on every class"
                r = reconstructions_from_codes(codes, w, members)
                entry["cache_points"] = int(len(r["recon"]))
                if len(r["recon"]) >= 10:
                    from sklearn.decomposition import PCA

                    k = min(5, len(members), len(r["recon"]) - 1)
                    if k >= 2:
                        coords = PCA(n_components=k).fit_transform(r["recon"])
                        radius = args.radius * float(np.median(np.linalg.norm(coords[:, :2], axis=1)))
                        pi = plane_indices(r["recon"], 5, radius=radius)
                        entry["cache_planes"] = plane_rows(pi)
                        entry["radius"] = radius
                        s12 = pi["planes"][0]["separability"]
                        entry["pc12_separability_percentile_among_clusters"] = (
                            float((seps < s12).mean() * 100) if len(seps) else None)
                        strs = np.array([tok.decode([int(t)]).strip() for t in r["token_ids"]])
                        top = [s for s, _ in sorted(((s, int((strs == s).sum())) for s in set(strs.tolist())),
                                                    key=lambda p: -p[1])[:12]]
                        entry["cache_top_tokens"] = top
                        lab = np.where(np.isin(strs, top[:10]), strs, "other")
                        fig = plot_planes_by_token(pi["coords"], lab, planes=[(1, 2), (2, 3), (1, 3)],
                                                   order=top[:10] + ["other"], indices=pi["planes"],
                                                   title=f"{tag} {method} {name} cluster ({len(members)} features), cache tokens")
                        fig.savefig(out / f"sae_{tag}_{method}_{name}_cache.png", dpi=110)
                report["sae"][f"{tag}/{method}/{name}"] = entry
                print(tag, method, name, {k: v for k, v in entry.items() if k in ("cluster_size", "cache_points", "lift",
                      "share_of_templated_words_fired",
                      "pc12_separability_percentile_among_clusters", "cache_top_tokens")}, flush=True)
            report["sae"][f"{tag}/{method}/scan"] = {
                "clusters_scanned": len(scan),
                "pc12_separability_quantiles_5_50_95": np.percentile(seps, [5, 50, 95]).round(4).tolist() if len(seps) else [],
                "top10_by_separability": [{"separability": round(s, 4), "mixture": round(m, 4), "size": len(c),
                                           "members": c[:12]} for s, m, c in sorted(scan, key=lambda t: -t[0])[:10]]}
        (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"done in {time.time() - t0:.0f}s -> {out / 'report.json'}")


if __name__ == "__main__":
    main()
