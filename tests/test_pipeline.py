"""Pipeline specs, overrides, RLCD logic with a scripted engine, and the run on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from prefdata.engines.base import Completion
from prefdata.errors import ConfigError, PrefdataError
from prefdata.generators import rlcd
from prefdata.generators.common import clean_output, degenerate_reason
from prefdata.config import apply_overrides
from prefdata.pipeline import load_spec, run_pipeline

REPO = Path(__file__).resolve().parents[1]


class Echo:
    """Answers with the descriptor tag it was given, so tests can see which side is which."""

    name, model_id = "scripted", "echo"

    def __init__(self, bad_first: int = 0):
        self.calls = []
        self.bad_first = bad_first

    def generate(self, requests, params):
        out = []
        for r in requests:
            self.calls.append(r)
            if self.bad_first and r.seed_offset < 7919 * self.bad_first:
                text = "ok ok ok ok ok ok ok ok ok ok ok ok ok ok"  # degenerate: retried
            else:
                text = f"Reply as told ({r.messages[0]['content']}) to {r.messages[-1]['content']}"
            out.append([Completion(text=text, finish_reason="stop")])
        return out

    def score(self, requests, completions):
        return [0.0] * len(requests)


def prompts(n=3, multi=False):
    rows = []
    for i in range(n):
        msgs = [{"role": "user", "content": f"question {i}"}]
        if multi:
            msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}] + msgs
        rows.append({"id": f"p{i}", "prompt": msgs, "meta": "{}"})
    return pa.Table.from_pylist(rows)


def test_rlcd_pairs_chosen_from_positive_descriptor():
    eng = Echo()
    report = {}
    out = rlcd.generate(prompts(4), eng, rlcd.RLCDConfig(principle_set="harmless"), seed=3, report=report)
    assert len(out) == 4 and report["dropped"] == 0
    for row in out.to_pylist():
        meta = json.loads(row["meta"])
        assert meta["positive"] in row["chosen"][0]["content"]
        assert meta["negative"] in row["rejected"][0]["content"]
        # The stored prompt is the user's dialogue, free of our descriptor scaffolding.
        assert row["prompt"] == [{"role": "user", "content": row["prompt"][0]["content"]}]
        assert row["source"].startswith("rlcd/")


def test_rlcd_pair_index_is_seeded_and_order_independent():
    a = rlcd.generate(prompts(6), Echo(), seed=1)
    b = rlcd.generate(prompts(6).take([5, 4, 3, 2, 1, 0]), Echo(), seed=1)
    idx = lambda t: {json.loads(m)["prompt_id"]: json.loads(m)["pair_index"] for m in t.column("meta").to_pylist()}
    assert idx(a) == idx(b)
    c = rlcd.generate(prompts(6), Echo(), seed=2)
    assert idx(a) != idx(c) or len(set(idx(a).values())) == 1


def test_rlcd_multiturn_earlier_assistant_turns_carry_opposite_descriptor():
    eng = Echo()
    rlcd.generate(prompts(1, multi=True), eng, seed=0)
    pos, neg = eng.calls[0], eng.calls[1]
    positive, negative = rlcd.tpl.load_principles()[1]["harmless"][rlcd.pair_index("p0", 0, 16)]
    assert positive in pos.messages[0]["content"] and negative in neg.messages[0]["content"]
    pos_prev = [m for m in pos.messages if m["role"] == "assistant"][0]["content"]
    neg_prev = [m for m in neg.messages if m["role"] == "assistant"][0]["content"]
    # p+ labels the earlier turn with the negative descriptor and vice versa.
    assert pos_prev.startswith(f"({negative})") and neg_prev.startswith(f"({positive})")
    # Apart from the descriptor the two prompts are identical.
    strip = lambda msgs, a, b: json.dumps(msgs).replace(a, "X").replace(b, "X")
    assert strip(pos.messages, positive, negative) == strip(neg.messages, positive, negative)


def test_rlcd_retries_then_drops_with_reason():
    ok = rlcd.generate(prompts(2), Echo(bad_first=1), rlcd.RLCDConfig(max_retries=1))
    assert len(ok) == 2
    report = {}
    dropped = rlcd.generate(prompts(2), Echo(bad_first=5), rlcd.RLCDConfig(max_retries=2), report=report)
    assert len(dropped) == 0 and report["dropped"] == 2
    assert any("repetitive" in k for k in report["drop_reasons"])


def test_filters():
    assert clean_output("Sure, here it is.\nHuman: and now?") == "Sure, here it is."
    assert clean_output("(kind and respectful) Hello") == "Hello"
    assert degenerate_reason("") == "empty"
    assert degenerate_reason("no no no no no no no no no no no no no no") == "repetitive"
    assert degenerate_reason("A perfectly normal answer with several different words in it today.") is None


def write_yaml(tmp_path, doc) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


BASE = {"engine": {"backend": "transformers"},
        "steps": [{"name": "rlcd", "uses": "rlcd", "input": "builtin:quickstart_prompts", "output": "qs"}]}


def test_unknown_key_names_file_and_key(tmp_path):
    doc = json.loads(json.dumps(BASE))
    doc["steps"][0]["config"] = {"temprature": 0.5}
    p = write_yaml(tmp_path, doc)
    with pytest.raises(ConfigError) as e:
        load_spec(p)
    assert str(p) in str(e.value) and "temprature" in str(e.value)
    doc = json.loads(json.dumps(BASE))
    doc["enigne"] = {}
    with pytest.raises(ConfigError, match="unknown key 'enigne'"):
        load_spec(write_yaml(tmp_path, doc))


def test_overrides_address_steps_by_name():
    raw = json.loads(json.dumps(BASE))
    apply_overrides(raw, ["steps.rlcd.config.max_tokens=12", "steps.rlcd.limit=2", "seed=7"], "x")
    assert raw["steps"][0]["config"]["max_tokens"] == 12 and raw["steps"][0]["limit"] == 2 and raw["seed"] == 7
    with pytest.raises(ConfigError, match="no step named"):
        apply_overrides(raw, ["steps.nope.limit=1"], "x")


def test_every_shipped_pipeline_validates():
    # The self-rewarding loop and the flywheel are ordinary pipelines now: one schema for every file.
    for p in sorted((REPO / "pipelines").glob("*.yaml")):
        load_spec(p)


def test_quickstart_prompt_set_is_large_and_balanced():
    from prefdata import io

    t = io.read(str(REPO / "prefdata" / "data" / "quickstart_prompts.jsonl"))
    cats = [json.loads(m)["category"] for m in t.column("meta").to_pylist()]
    assert len(t) >= 60 and {cats.count(c) for c in set(cats)} == {22}


def test_run_on_tiny_model_commits_and_resumes(tmp_path, tiny_model):
    from prefdata import store

    sets = [f"engine.model={tiny_model}", "steps.rlcd.limit=4", "steps.rlcd.config.max_tokens=8",
            "steps.rlcd.config.max_retries=1"]
    out = run_pipeline(REPO / "pipelines" / "quickstart.yaml", sets)
    v = out["rlcd"]
    assert v.ref == "quickstart-rlcd@v1"
    man = json.loads((Path(v.path) / "manifest.json").read_text())
    lin = man["lineage"]
    assert lin["parents"] == ["builtin:quickstart_prompts"]
    assert lin["templates"]["rlcd_prompt"] == rlcd.tpl.TEMPLATE_VERSION and lin["model"]
    card = Path(v.card_path).read_text()
    assert "RLCD generation" in card and "quickstart.yaml" in card
    ds = store.load(v.ref)
    assert set(["prompt", "chosen", "rejected", "label_prob"]) <= set(ds.column_names)
    # Second run: same fingerprint, nothing regenerated, same version.
    again = run_pipeline(REPO / "pipelines" / "quickstart.yaml", sets)
    assert again["rlcd"].ref == v.ref


@pytest.mark.parametrize("where, block, message", [
    ("step engine", {"engine": {"modle": "x"}}, "unknown key 'steps.gen.engine.modle'"),
    ("pipeline engine", {"top_engine": {"concurrency": 0}}, "engine.concurrency"),
    ("judge_engine", {"uses": "self_reward", "config": {"judge_engine": {"backend": "tpu"}}},
     "steps.gen.config.judge_engine.backend"),
    ("target_engine", {"uses": "bpo_evaluate", "config": {"target_engine": {"token_budget": "lots"}}},
     "steps.gen.config.target_engine.token_budget"),
])
def test_engine_overrides_are_typed_and_fail_at_load(tmp_path, where, block, message):
    """Every place that names an engine takes EngineOverrides: a typo or a bad value fails when the
    YAML loads, naming its path, not minutes later when the engine is first built."""
    block = dict(block)
    step = {"name": "gen", "uses": block.pop("uses", "rlcd"), "input": "builtin:quickstart", "output": "x", **{
        k: v for k, v in block.items() if k != "top_engine"}}
    doc = {"name": "t", "steps": [step], **({"engine": block["top_engine"]} if "top_engine" in block else {})}
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_spec(write_yaml(tmp_path, doc))


def test_engine_overrides_record_only_what_was_given(tmp_path):
    from prefdata.engines import EngineOverrides, overrides_dict

    spec = load_spec(write_yaml(tmp_path, {"name": "t", "engine": {"max_batch_size": 8}, "steps": [
        {"name": "gen", "uses": "rlcd", "input": "builtin:quickstart", "output": "x", "engine": {"model": "m"}}]}))
    assert isinstance(spec.steps[0].engine, EngineOverrides)
    assert spec.model_dump(mode="json")["engine"] == {"max_batch_size": 8}
    assert overrides_dict(spec.steps[0].engine) == {"model": "m"}


def test_step_allow_empty_keeps_pairs_with_an_empty_answer(tmp_path):
    """`allow_empty: rejected` on a step reaches the reader: the empty-answer pair is kept, not failed."""
    from prefdata import store

    src = tmp_path / "pairs.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "What is 2+2?", "chosen": "4", "rejected": ""},
        {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "A number."}]) + "\n")
    doc = {"name": "t", "steps": [{"name": "d", "uses": "dedup", "input": str(src), "output": "kept"}]}
    with pytest.raises(PrefdataError, match="allow_empty"):
        run_pipeline(write_yaml(tmp_path, doc))
    doc["steps"][0]["allow_empty"] = "rejected"
    run_pipeline(write_yaml(tmp_path, doc))
    rows = store.load_table("kept@latest").to_pylist()
    assert len(rows) == 2 and rows[0]["rejected"][-1]["content"] == ""
    doc["steps"][0]["allow_empty"] = "sometimes"
    with pytest.raises(ConfigError, match="allow_empty"):
        load_spec(write_yaml(tmp_path, doc))
