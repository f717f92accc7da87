"""Harvesting: model + corpus sources, the harvest loop, and the activation cache format.

    from harvesting import HarvestConfig, harvest, CacheReader
    harvest(HarvestConfig(model="smollm2-135m", hooks=("blocks.8.hook_resid_post",), tokens=100_000, out="cache/acts"))
    for batch in CacheReader("cache/acts").batches("blocks.8.hook_resid_post", 4096, normalize=True):
        ...

A half-size cache is `HarvestConfig(..., dtype="bfloat16")` (or `convert_cache` of a float32 one);
it reads through the same `CacheReader`.
"""

from harvesting.cache import DTYPES, FORMAT_VERSION, CacheWriter, read_manifest
from harvesting.convert import convert_cache
from harvesting.corpus import (
    Document,
    debian_text_records,
    offline_records,
    open_documents,
    pack_contexts,
    wiki_vital_records,
)
from harvesting.harvest import HarvestConfig, harvest
from harvesting.inspect_cache import VerifyReport, cache_summary, format_summary, verify_cache
from harvesting.reader import CacheReader
from harvesting.shuffle_buffer import CacheStream, ShuffleBuffer, StreamSource
from harvesting.stream import ModelStream
from workbench.models import LoadedModel, from_hf_model, load_model  # the floor's; re-exported for old callers

__all__ = [
    "DTYPES",
    "FORMAT_VERSION",
    "CacheReader",
    "CacheStream",
    "CacheWriter",
    "Document",
    "HarvestConfig",
    "LoadedModel",
    "ModelStream",
    "ShuffleBuffer",
    "StreamSource",
    "VerifyReport",
    "cache_summary",
    "convert_cache",
    "debian_text_records",
    "format_summary",
    "from_hf_model",
    "harvest",
    "load_model",
    "offline_records",
    "open_documents",
    "pack_contexts",
    "read_manifest",
    "verify_cache",
    "wiki_vital_records",
]
