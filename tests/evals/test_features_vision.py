"""Vision caches: top images per feature with the feature's activation on every patch (heat map)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch


def test_top_images_and_heat_maps_equal_brute_force(tmp_path):
    import skimage.data
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    from evals.browser import build_browser
    from evals.features import FeatureConfig, FeatureData, build_features
    from harvesting import CacheReader, HarvestConfig, harvest
    from saes import SAEConfig, build_sae, load_sae, save_sae

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model_dir = tmp_path / "vit"
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
                       patch_size=8)).save_pretrained(model_dir)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(model_dir)
    images = tmp_path / "images"
    images.mkdir()
    src = Path(skimage.data.__file__).parent
    for n in ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png", "horse.png", "coins.png"]:
        shutil.copy(src / n, images / n)
    hook = "blocks.1.hook_resid_post"
    cache = tmp_path / "acts"
    harvest(HarvestConfig(model=str(model_dir), corpus=str(images), hooks=(hook,), tokens=10_000, out=str(cache),
                          batch_size=2, shard_tokens=40, device="cpu", progress=False))
    r = CacheReader(cache)
    assert len(r.shards) >= 2
    sae = build_sae(SAEConfig(architecture="topk", d_in=32, num_features=24, k=4, hook=hook, model_id=str(model_dir)),
                    generator=torch.Generator().manual_seed(1))
    rows = [r.load_shard(i) for i in range(len(r.shards))]
    x = torch.cat([s[hook] for s in rows]).float()
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0))
    save_sae(sae, tmp_path / "sae")
    out = build_features(tmp_path / "sae", cache, tmp_path / "feat", FeatureConfig(top_images=3), progress=False)
    data = FeatureData(out)
    img = torch.cat([s["image_ids"] for s in rows])
    patch = torch.cat([s["patch_ids"] for s in rows])
    with torch.no_grad():
        z = load_sae(tmp_path / "sae").encode_dense(x)
    t = data.tensors
    assert t["top_heat"].shape[2] == 17  # CLS + 4x4 patches
    for f in range(24):
        per_image = {int(i): z[img == i, f] for i in img.unique()}
        best = sorted(((float(a.max()), i) for i, a in per_image.items() if a.max() > 0), key=lambda p: (-p[0], p[1]))[:3]
        assert [i for _, i in best] == t["top_image"][f, :len(best)].tolist()
        for j, (v, i) in enumerate(best):
            assert float(t["top_val"][f, j]) == v
            order = torch.argsort(patch[img == i])
            assert torch.equal(t["top_heat"][f, j], per_image[i][order])
    assert {p.stem for p in (out / "images").glob("*.png")} >= {str(i) for i in t["top_image"].unique().tolist() if i >= 0}
    index = build_browser(out, tmp_path / "site", progress=False)
    page = (index.parent / "features" / f"{int(torch.argmax(t['nnz'])):05d}.html").read_text()
    assert 'class="heat"' in page and "../images/" in page and "grid-template-columns:repeat(4,1fr)" in page
