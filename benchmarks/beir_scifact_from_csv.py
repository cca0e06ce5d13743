"""BEIR's SciFact collection (corpus.jsonl, queries.jsonl, qrels/train.tsv and qrels/test.tsv) rebuilt from the
CSV export of the original SciFact release (claims_train.csv, claims_validation.csv, corpus_train.csv: the
columns of the Hugging Face `allenai/scifact` dataset), for `bench_retrieval.py`.

    python benchmarks/beir_scifact_from_csv.py CSV_DIR OUT_DIR

BEIR's conversion, as checked against a published BEIR copy (RESULTS.md says which): a document is
{"_id": doc_id, "title": title stripped, "text": the abstract's sentences, each stripped, joined by one space};
a query is a claim; its judged documents are the claim's `cited_doc_ids`, score 1 (BEIR's test split is
SciFact's validation split). The qrels rows are sorted as BEIR's files are (query id, then document id, as
text). SciFact is CC BY-NC 2.0: the output is for local measurement, not for committing.
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import re
from pathlib import Path

# one Python/numpy string literal of the printed sentence array
_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", re.S)


def sentences(printed: str) -> list[str]:
    """The sentences of an abstract printed as a numpy array of strings (`['s1' 's2' ...]`)."""
    return [ast.literal_eval(m.group(0)) for m in _LITERAL.finditer(printed)]


def convert(src: Path, dst: Path) -> dict[str, int]:
    """Write the BEIR files of SciFact under `dst` from the CSV files in `src`; returns counts."""
    csv.field_size_limit(1 << 30)
    (dst / "qrels").mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with (src / "corpus_train.csv").open(newline="", encoding="utf-8") as fh, \
            (dst / "corpus.jsonl").open("w", encoding="utf-8") as out:
        n = 0
        for row in csv.DictReader(fh):
            text = " ".join(s.strip() for s in sentences(row["abstract"]))
            out.write(json.dumps({"_id": row["doc_id"], "title": row["title"].strip(), "text": text},
                                 ensure_ascii=False) + "\n")
            n += 1
        counts["documents"] = n
    claims: dict[str, str] = {}
    for split, name in (("train", "claims_train"), ("test", "claims_validation")):
        pairs: set[tuple[str, str]] = set()
        with (src / f"{name}.csv").open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                claims[row["id"]] = row["claim"]
                pairs.update((row["id"], d) for d in re.findall(r"\d+", row["cited_doc_ids"]))
        with (dst / "qrels" / f"{split}.tsv").open("w", encoding="utf-8") as out:
            out.write("query-id\tcorpus-id\tscore\n")
            out.writelines(f"{q}\t{d}\t1\n" for q, d in sorted(pairs))
        counts[f"{split} judgments"] = len(pairs)
        counts[f"{split} queries"] = len({q for q, _ in pairs})
    with (dst / "queries.jsonl").open("w", encoding="utf-8") as out:
        for qid in sorted(claims, key=int):
            out.write(json.dumps({"_id": qid, "text": claims[qid], "metadata": {}}, ensure_ascii=False) + "\n")
    counts["queries"] = len(claims)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="folder with claims_train.csv, claims_validation.csv, corpus_train.csv")
    ap.add_argument("dst", type=Path, help="output folder (BEIR layout)")
    args = ap.parse_args()
    missing = [f for f in ("claims_train.csv", "claims_validation.csv", "corpus_train.csv")
               if not (args.src / f).is_file()]
    if missing:
        raise SystemExit(f"{args.src}: missing {', '.join(missing)}")
    for what, n in convert(args.src, args.dst).items():
        print(f"{what}: {n}")


if __name__ == "__main__":
    main()
