"""The dedup step: exact, MinHash near-duplicates, n-gram decontamination, card and side table."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pytest
import yaml

from prefdata import store
from prefdata.dedup import DedupConfig, _grams, dedup
from prefdata.testing import run_cli as cli

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega").split()


def _long(seed: int, n: int = 100) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(WORDS)}{rng.randrange(100)}" for _ in range(n)]


def _table(prompts: list[str]) -> pa.Table:
    return pa.Table.from_pylist([{"id": f"r{i}", "prompt": [{"role": "user", "content": p}],
                                  "chosen": [{"role": "assistant", "content": "yes"}],
                                  "rejected": [{"role": "assistant", "content": "no"}], "source": "t"}
                                 for i, p in enumerate(prompts)])


def _jaccard(a: str, b: str, k: int) -> float:
    x, y = _grams(a.lower().split(), k), _grams(b.lower().split(), k)
    return len(x & y) / len(x | y)


def test_exact_near_and_distinct_rows():
    base = _long(1)
    near = list(base)
    near[50] = "changed"  # one word in 100: 5 of 96 shingles differ
    other = _long(2)
    prompts = [" ".join(base), "  " + " ".join(base).upper() + " !", " ".join(near), " ".join(other)]
    j = _jaccard(prompts[0], prompts[2], 5)
    assert j == pytest.approx(91 / 101) and j >= 0.8 and _jaccard(prompts[0], prompts[3], 5) < 0.05
    keep, reason, match, info = dedup(_table(prompts), DedupConfig())
    assert keep.tolist() == [True, False, False, True]
    assert reason == [None, "exact", "near", None] and match[1] == 0 and match[2] == 0
    assert info["lsh_bands"] * info["lsh_rows"] <= 128
    # A stricter threshold than the pair's Jaccard keeps the near twin.
    keep, reason, _, _ = dedup(_table(prompts), DedupConfig(threshold=0.97))
    assert reason == [None, "exact", None, None]


def test_pair_mode_keeps_a_prompt_asked_with_other_answers():
    t = _table(["same question here", "same question here"])
    t = t.set_column(t.column_names.index("chosen"), "chosen", pa.array(
        [[{"role": "assistant", "content": "one"}], [{"role": "assistant", "content": "two"}]]))
    assert dedup(t, DedupConfig(on="prompt"))[0].tolist() == [True, False]
    assert dedup(t, DedupConfig(on="pair"))[0].tolist() == [True, True]


def test_decontamination_by_13_grams_and_whole_short_prompts(tmp_path):
    ev = tmp_path / "eval.jsonl"
    long_eval = " ".join(_long(3, 30))
    ev.write_text(json.dumps({"prompt": [{"role": "user", "content": long_eval}]}) + "\n"
                  + json.dumps({"prompt": [{"role": "user", "content": "Name the capital of France."}]}) + "\n")
    leak = " ".join(["please", "answer"] + _long(3, 30)[5:18] + ["thanks"])  # 13 words of the eval prompt
    short_leak = "Quick quiz: name the capital of france, then explain."
    twelve = " ".join(["please"] + _long(3, 30)[5:17] + ["thanks"])  # only 12: no full 13-gram
    keep, reason, match, info = dedup(_table([leak, short_leak, twelve, "unrelated words only"]),
                                      DedupConfig(decontaminate=[str(ev)]))
    assert reason == ["contaminated", "contaminated", None, None] and match[:2] == [0, 1]
    assert info["eval_prompts"] == 2


def test_the_step_in_a_pipeline_commits_kept_rows_removed_side_table_and_card(tmp_path, capsys):
    rows = _table([" ".join(_long(1)), " ".join(_long(1)) + ".", " ".join(_long(4)), "what is the capital of france"])
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows.to_pylist()))
    ev = tmp_path / "ev.jsonl"
    ev.write_text(json.dumps({"prompt": [{"role": "user", "content": "What is the capital of France?"}]}) + "\n")
    p = tmp_path / "d.yaml"
    p.write_text(yaml.safe_dump({"shard_rows": 1, "steps": [{"name": "clean", "uses": "dedup", "input": str(src),
                                                             "output": "clean", "config": {
                                                                 "decontaminate": [str(ev)]}}]}))
    code, _, err = cli(capsys, "run", p)
    assert code == 0, err
    v = store.resolve("clean")
    assert v.manifest["splits"]["train"]["rows"] == 2  # the whole table, although shard_rows is 1
    rep = v.manifest["lineage"]["report"]
    assert (rep["exact"], rep["near"], rep["contaminated"], rep["kept"]) == (1, 0, 1, 2)
    removed = store.load_table(v.manifest["lineage"]["side_tables"]["removed"])
    assert removed.column("dedup_reason").to_pylist() == ["exact", "contaminated"]
    card = v.card_path.read_text()
    assert "## Deduplication and decontamination" in card and "| removed: exact | 1 |" in card
    assert "Examples (contaminated)" in card and "13-word n-grams" in card


def test_bad_config_is_one_line(tmp_path, capsys):
    p = tmp_path / "d.yaml"
    p.write_text(yaml.safe_dump({"steps": [{"name": "clean", "uses": "dedup", "input": "builtin:quickstart_prompts",
                                            "output": "c", "config": {"threshold": 1.5}}]}))
    code, _, err = cli(capsys, "run", p)
    assert code == 1 and "steps.clean.config.threshold" in err and "Traceback" not in err
