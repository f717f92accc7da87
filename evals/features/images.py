"""Thumbnails of a vision cache's top images, read back from the corpus its manifest names."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

from workbench.io import atomic_write_bytes

log = logging.getLogger(__name__)


def save_thumbnails(manifest: dict[str, Any], image_ids: list[int], out: Path, size: int = 160) -> int:
    """Write `<out>/<id>.png` for each corpus image id (the harvest's document index); returns how many.

    Images come from the corpus recorded in the manifest (same id, split, field and seed, so the
    document indices are the harvest's); if it cannot be opened, pages show heat maps alone.
    """
    if not image_ids:
        return 0
    from harvesting.corpus import open_documents

    c = manifest.get("corpus") or {}
    want = set(image_ids)
    done = 0
    try:
        docs = open_documents(c["id"], split=c.get("split", "train"), field=c.get("field"), seed=c.get("seed", 0),
                              subset=c.get("subset"), modality="vision")
        for d in docs:
            if d.index not in want:
                continue
            img = d.image.convert("RGB") if hasattr(d.image, "convert") else d.image
            img = img.resize((size, size))
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            atomic_write_bytes(out / f"{d.index}.png", buf.getvalue())
            done += 1
            if done == len(want):
                break
    except Exception as e:  # noqa: BLE001 - the corpus may have moved; dashboards stay usable
        log.warning("could not read images from the corpus %r (%s); pages show heat maps only", c.get("id"), e)
    return done
