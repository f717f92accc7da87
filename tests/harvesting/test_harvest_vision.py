"""A vision harvest over real photographs through the bridge, with the model's own preprocessing."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from harvesting import CacheReader, HarvestConfig, harvest, load_model

HOOK = "blocks.1.hook_resid_post"


@pytest.mark.parametrize("model_fixture", ["tiny_vit_dir", "tiny_clip_dir"])
def test_vision_harvest_over_an_image_folder(model_fixture, image_folder, tmp_path, request) -> None:
    """ViT through TransformerLens' own adapter; CLIP's vision tower through ours (workbench.clip_vision)."""
    tiny_vit_dir = request.getfixturevalue(model_fixture)
    cfg = HarvestConfig(model=str(tiny_vit_dir), corpus=str(image_folder), hooks=(HOOK, "blocks.2.hook_resid_post"),
                        tokens=17 * 5, batch_size=2, out=str(tmp_path / "v"), shard_tokens=40, progress=False)
    out = harvest(cfg)
    r = CacheReader(out)
    assert r.manifest["model"]["modality"] == "vision"
    rows = {k: torch.cat([r.load_shard(i)[k] for i in range(len(r.shards))]) for k in ("image_ids", "patch_ids", HOOK)}
    # 32x32 images in 8x8 patches: CLS + 16 patches per image, all stored
    assert rows[HOOK].shape == (17 * 5, 32)
    assert torch.equal(rows["patch_ids"], torch.arange(17).repeat(5).to(rows["patch_ids"].dtype))
    assert len(set(rows["image_ids"].tolist())) == 5
    # Row alignment: recompute the third image directly with the model's own preprocessing.
    import datasets

    ds = datasets.load_dataset("imagefolder", data_dir=str(image_folder), split="train")
    lm = load_model(str(tiny_vit_dir))
    hf_cls = type(lm.bridge.original_model)
    img_id = int(rows["image_ids"][2 * 17])
    img: Image.Image = ds[img_id]["image"].convert("RGB")
    px = lm.image_processor(images=[img], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        _, cache = lm.bridge.run_with_cache(px, names_filter=[HOOK])
    torch.testing.assert_close(rows[HOOK][2 * 17:3 * 17], cache[HOOK][0], rtol=1e-5, atol=1e-5)
    # and the bridge agrees with the plain Hugging Face forward of the same weights
    with torch.no_grad():
        hs = hf_cls.from_pretrained(tiny_vit_dir).eval()(pixel_values=px, output_hidden_states=True).hidden_states
    torch.testing.assert_close(rows[HOOK][2 * 17:3 * 17], hs[2][0], rtol=1e-5, atol=1e-5)
