"""PandaLM's 3-annotator test set as preference pairs with an agreement column.

    python benchmarks/pandalm.py ../shared/data/pandalm_dev.jsonl.gz /tmp/pandalm_pairs.jsonl

The majority of the three annotators is the label; `agreement` is how many of the three gave it (2
or 3). Pairs whose majority is "about the same" (0) have no chosen side and are left out (47 of the
500 dev rows). Responses that are JSON `true` are kept as the text "true", as the annotators saw it.
"""

from __future__ import annotations

import collections
import gzip
import json
import sys


def convert(src: str, dst: str) -> dict:
    opener = gzip.open if src.endswith(".gz") else open
    kept = ties = 0
    with opener(src, "rt", encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as out:
        for line in f:
            r = json.loads(line)
            votes = [str(r[f"annotator{i}"]) for i in (1, 2, 3)]
            label, n = collections.Counter(votes).most_common(1)[0]
            if label not in ("1", "2"):
                ties += 1
                continue
            prompt = str(r["instruction"]) + (f"\n\n{r['input']}" if r.get("input") else "")
            a, b = str(r["response1"]), str(r["response2"])
            chosen, rejected = (a, b) if label == "1" else (b, a)
            out.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected, "agreement": n,
                                  "source_idx": str(r["idx"]), "cmp_key": r.get("cmp_key")}) + "\n")
            kept += 1
    return {"pairs": kept, "ties_left_out": ties}


if __name__ == "__main__":
    print(json.dumps(convert(sys.argv[1], sys.argv[2])))
