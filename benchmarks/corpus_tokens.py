"""Count a named offline corpus in the offline model's tokens, per source: what "about 26M tokens" rests on.

    python benchmarks/corpus_tokens.py --corpus debian-text

The harvest adds one separator per document, so a cache of the whole corpus holds tokens + documents rows.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import sys
import time

os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="debian-text", help="a named offline corpus (debian-text, wiki-vital)")
    ap.add_argument("--model", default="smollm2-135m", help="offline model alias whose tokenizer counts")
    a = ap.parse_args()
    from transformers import AutoTokenizer

    from harvesting.corpus import offline_records
    from workbench.models import offline_path

    p = offline_path(a.model)
    tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    t0 = time.time()
    recs = offline_records(a.corpus)
    per, docs, chars = collections.Counter(), collections.Counter(), collections.Counter()
    for i in range(0, len(recs), 1000):
        chunk = recs[i:i + 1000]
        for r, ids in zip(chunk, tok([r["text"] for r in chunk], add_special_tokens=False)["input_ids"]):
            src = r.get("source") or a.corpus
            per[src] += len(ids)
            docs[src] += 1
            chars[src] += len(r["text"])
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"tokenizer: {a.model} ({len(tok):,} tokens)\n")
    print("| source | documents | characters | tokens |\n|---|---:|---:|---:|")
    for k in per:
        print(f"| {k} | {docs[k]:,} | {chars[k]:,} | {per[k]:,} |")
    print(f"| **total** | {sum(docs.values()):,} | {sum(chars.values()):,} | {sum(per.values()):,} |")
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
