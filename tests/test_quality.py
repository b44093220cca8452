"""The quality verdict at the top of every generator card (issue 25, item 1): each check on rows made
to trigger it and on rows made not to, the headline and the run line, shards adding up, the generator
steps' cards, and one RLCD run on the tiny model through the pipeline."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pyarrow as pa
import pytest

from prefdata import quality
from prefdata.engines.base import Completion
from prefdata.quality import THRESHOLDS, checks, headline, measure, run_line, warnings


def by_name(q: dict) -> dict:
    return {c.name: c for c in checks(q)}


def warned(q: dict) -> set[str]:
    return {c.name for c in checks(q) if c.warning}


# Twenty unrelated pairs; the longer text is chosen on every other one, so no length skew.
DISTINCT = [(a, b) if i % 2 else (b, a) for i, (a, b) in enumerate(
    (f"Answer number {i} talks about apples and pears in detail.", f"Reply {i}: rain falls on the hills.")
    for i in range(20))]


def pairs(rows=DISTINCT, **kw) -> dict:
    return measure([a for a, _ in rows], [b for _, b in rows], **kw)


def test_clean_rows_give_no_warnings_and_say_so():
    q = pairs(finish=["stop"] * 40, label_prob=[1.0] * 20, parse=(20, 0), repeated=[[3, 3]] * 20)
    assert warned(q) == set() and warnings(q) == []
    assert headline(q) == "Quality: no warnings (20 pairs checked)."
    assert run_line({"quality": q}) == "; quality: no warnings (20 pairs checked)."
    assert run_line({}) == "" and run_line(None) == ""


def test_truncation_warns_above_the_threshold_and_is_unknown_when_not_recorded():
    q = pairs(finish=["length"] * 6 + ["stop"] * 34)  # 15% > 10%
    assert q["truncated"] == 6 and "truncation" in warned(q)
    assert "15% of answers cut off at max_tokens" in headline(q)
    assert "truncation" not in warned(pairs(finish=["length"] * 4 + ["stop"] * 36))  # 10% is not above
    unknown = by_name(pairs())["truncation"]
    assert unknown.measured == "unknown" and "cannot be counted" in unknown.reading and not unknown.warning
    partly = pairs(finish=["length"] * 20 + [None] * 20)  # known for half: the rate is over the known ones
    assert "100% of answers" in by_name(partly)["truncation"].warning
    assert "20 answers not recorded" in by_name(partly)["truncation"].measured


def test_parse_failures():
    assert "parse failures" in warned(pairs(parse=(10, 2), parse_what="tagged edits"))
    assert "20% of tagged edits unparseable" in headline(pairs(parse=(10, 2), parse_what="tagged edits"))
    assert "parse failures" not in warned(pairs(parse=(10, 1)))
    assert by_name(pairs())["parse failures"].measured == "n/a"


def test_judge_self_agreement():
    assert quality.agreement_counts([[4.0, 4.0, 2.0], [None, 3.0, 3.0]]) == (4, 2)
    low = pairs(repeated=[[1, 2, 3]] * 10)  # never agrees
    assert "judge self-agreement" in warned(low) and "only 0%" in headline(low)
    high = pairs(repeated=[[3, 3, 3]] * 9 + [[1, 2, 3]])  # 27 of 30 pairs agree
    assert "judge self-agreement" not in warned(high)
    once = by_name(pairs(repeated=[[3]] * 10))["judge self-agreement"]
    assert once.measured == "n/a" and not once.warning


def test_pairwise_orders_agree_when_they_prefer_the_same_text():
    # x shown as A wins, then x shown as B wins: the same verdict. Always "A": position bias.
    consistent = quality.pairwise_judgements(["Winner: A"] * 4, ["Winner: B"] * 4)
    assert consistent["parse"] == (8, 0) and quality.agreement_counts(consistent["repeated"]) == (4, 4)
    biased = quality.pairwise_judgements(["Winner: A"] * 4, ["Winner: A", "Winner: A", "Winner: A", "no idea"])
    assert biased["parse"] == (8, 1) and quality.agreement_counts(biased["repeated"]) == (3, 0)
    q = measure(["a b"] * 4, ["c d"] * 4, label_prob=[0.5] * 4, **biased)
    assert {"judge self-agreement", "parse failures", "uncertain labels"} <= warned(q)


def test_identical_and_near_identical_pairs():
    near = ("The quick brown fox jumps over the lazy dog near the river",
            "The quick brown fox jumps over the lazy dog near the river bank")  # Jaccard 11/12
    assert quality.token_jaccard(*near) >= THRESHOLDS.near_identical
    assert quality.token_jaccard("Candidate answer #0", "Candidate answer #1") < THRESHOLDS.near_identical
    rows = DISTINCT[:17] + [("Same answer.", "Same answer. "), ("Same answer.", "Same answer."), near]
    q = pairs(rows)
    assert (q["identical"], q["near_identical"]) == (2, 1) and "identical pairs" in warned(q)
    assert "3 of 20 pairs identical or near-identical" in headline(q)
    one = pairs(DISTINCT[:19] + [("Same.", "Same.")])  # 5% is not above 5%
    assert one["identical"] == 1 and "identical pairs" not in warned(one)


def test_meta_text_and_refusal_markers():
    meta = [("Here is a rewritten version of the reply: apples are red.", b) for _, b in DISTINCT[:3]] + DISTINCT[3:]
    q = pairs(meta)
    assert q["meta_first"] == 3 and q["meta_second"] == 0 and "meta-text and refusals" in warned(q)
    assert "meta-text in 15% of chosen and 0% of rejected" in headline(q)
    tags = pairs([(a, "<response>Rain falls.</response>") for a, _ in DISTINCT[:2]] + DISTINCT[2:])
    assert tags["meta_second"] == 2 and "meta-text and refusals" in warned(tags)
    # Refusals on one side only teach "refuse"; on both sides alike they do not.
    one_sided = pairs([(a, "I'm sorry, but I cannot help with that.") for a, _ in DISTINCT[:5]] + DISTINCT[5:])
    assert one_sided["refusal_second"] == 5 and "refusals in 0% of chosen vs 25% of rejected" in headline(one_sided)
    both = pairs([("As an AI, I won't guess. " + a, "I cannot say. " + b) for a, b in DISTINCT[:5]] + DISTINCT[5:])
    assert both["refusal_first"] == both["refusal_second"] == 5 and "meta-text and refusals" not in warned(both)
    assert not quality.has_refusal("I can tell you exactly how") and not quality.has_meta_text("Here is a recipe")


def test_length_skew():
    longer = [(f"{a} {a}", b) for a, b in DISTINCT]  # chosen twice as long, and longer on every pair
    q = pairs(longer)
    assert q["first_longer"] == 20 and "length skew" in warned(q) and "chosen longer" in headline(q)
    assert "length skew" not in warned(pairs())  # longer on every other pair, mean ratio 1
    assert "length skew" in warned(pairs([(b, f"{b} {b}") for _, b in DISTINCT]))  # chosen half as long
    # One word longer on every pair: a small ratio, but a share a reward model can learn.
    by_share = pairs([(f"{b} indeed", b) for _, b in DISTINCT])
    assert math.exp(by_share["log_ratio_milli"] / 1000 / 20) < THRESHOLDS.length_ratio
    assert "length skew" in warned(by_share)
    few = pairs(longer[:4])  # below length_min_rows: reported, not warned
    assert "length skew" not in warned(few) and "not warned" in by_name(few)["length skew"].reading


def test_uncertain_labels():
    q = pairs(label_prob=[0.5] * 3 + [None] * 2 + [1.0] * 15)  # ties (null) count as uncertain: 25%
    assert q["uncertain"] == 5 and "uncertain labels" in warned(q) and "25% of labels uncertain" in headline(q)
    assert "uncertain labels" not in warned(pairs(label_prob=[0.3, 0.7] + [1.0] * 18))  # outside [0.35, 0.65]
    assert by_name(pairs())["uncertain labels"].measured == "n/a"


def test_rewrites_that_read_as_answers_and_single_answer_rows():
    orig = [f"Explain topic {i}." for i in range(6)]
    long = [f"Sure! Topic {i} is a big subject with many parts, and here is everything about it " * 2
            for i in range(6)]
    q = measure(long, orig, kind="rewrite")
    assert "length skew" in warned(q) and "optimized prompts" in headline(q)
    assert "length skew" not in warned(measure([o + " Be specific." for o in orig], orig, kind="rewrite"))
    sft = measure(["Here is the revised response: hi"] * 3 + ["fine"] * 7, kind="sft", finish=["stop"] * 10)
    assert warned(sft) == {"meta-text and refusals"} and by_name(sft)["identical pairs"].measured == "n/a"
    with pytest.raises(ValueError):
        measure(["a"], kind="nonsense")


def test_counts_are_integers_that_add_up_across_shards():
    """A streamed step reports per shard; the pipeline sums the counts. The sum must read the same
    as one measurement over all rows."""
    from prefdata.step_card import merge_reports as _merge_reports

    rows = DISTINCT[:10] + [(f"{a} {a} {a}", b) for a, b in DISTINCT[10:]]
    fin = ["length", "stop"] * 20
    lp = [0.5] * 6 + [1.0] * 14
    whole = pairs(rows, finish=fin, label_prob=lp, parse=(40, 4), repeated=[[1, 2]] * 20)
    a = pairs(rows[:7], finish=fin[:14], label_prob=lp[:7], parse=(14, 4), repeated=[[1, 2]] * 7)
    b = pairs(rows[7:], finish=fin[14:], label_prob=lp[7:], parse=(26, 0), repeated=[[1, 2]] * 13)
    merged = _merge_reports({"quality": a}, {"quality": b})["quality"]
    assert all(isinstance(v, (int, str)) for v in whole.values())
    assert {k: v for k, v in merged.items() if k != "log_ratio_milli"} == \
        {k: v for k, v in whole.items() if k != "log_ratio_milli"}
    assert abs(merged["log_ratio_milli"] - whole["log_ratio_milli"]) <= 1  # rounded per shard
    assert headline(merged) == headline(whole)
    described = "**Notice.**\n\nQuality: no warnings (7 pairs checked).\n\nMore text."
    assert quality.restate(described, {"quality": merged}) == f"**Notice.**\n\n{headline(whole)}\n\nMore text."
    assert quality.restate(None, {"quality": merged}) is None and quality.restate("x", {}) == "x"


# ----------------------------------------------------------------------------- the generator steps


class Engine:
    """`fn(request, sample) -> (text, finish_reason)`; a pairwise judge's answers by `judge`."""

    name, model_id = "scripted", "scripted-model"

    def __init__(self, fn):
        self.fn = fn

    def generate(self, requests, params):
        return [[Completion(*self.fn(r, s)) for s in range(params.n)] for r in requests]


class Ctx:
    seed, shard = 0, 0

    def __init__(self, eng):
        self.eng = eng

    def engine(self, override=None):
        return self.eng


def prompts(n):
    return pa.Table.from_pylist([{"id": f"p{i}", "prompt": [{"role": "user", "content": f"How do I do task {i}?"}]}
                                 for i in range(n)])


def first_section(res) -> str:
    title, text = res.card_sections[0]
    assert title == "Quality verdict"
    return text


def test_rlcd_card_opens_with_truncation_from_recorded_finish_reasons():
    from prefdata.generators import rlcd

    _, sets = rlcd.tpl.load_principles()
    negatives = {n for _, n in sets["helpful"]}

    def fn(req, s):  # the continuation under the negative descriptor always runs out of tokens
        desc = req.messages[0]["content"].split("must be ")[1].rstrip(".")
        return f"A reply that is {desc}.", "length" if desc in negatives else "stop"

    res = rlcd.run_step(rlcd.RLCDConfig(principle_set="helpful"), prompts(6), Ctx(Engine(fn)))
    metas = [json.loads(m) for m in res.tables["train"].column("meta").to_pylist()]
    assert all(len(m["finish_reasons"]) == 2 for m in metas)
    q = res.report["quality"]
    assert q["answers"] == 12 and q["finish_known"] == 12 and q["truncated"] == 6
    assert res.lineage["description"] == headline(q) and "cut off at max_tokens" in res.lineage["description"]
    assert "⚠ truncation" in first_section(res)


def test_conditional_card_flags_leaked_meta_text_and_unparseable_edits():
    from prefdata.generators import conditional

    def fn(req, s):
        text = req.messages[-1]["content"]
        if "Draft reply" in text:
            if "task 0" in text:
                return "forgot the tags", "stop"
            return ("<aspects>Helpfulness</aspects><response>Here is a rewritten version of the reply: do it "
                    "step by step.</response>"), "stop"
        return "A first draft reply to the request.", "stop"

    res = conditional.run_step(conditional.ConditionalConfig(max_retries=0), prompts(4), Ctx(Engine(fn)))
    q = res.report["quality"]
    assert q["parsed_outputs"] == 4 and q["unparsed"] == 1 and q["parse_what"] == "tagged edits"
    assert q["meta_first"] + q["meta_second"] == 3  # every kept edit announces itself
    desc = res.lineage["description"]
    assert desc.startswith("Quality: 2 warnings — ") and "unparseable" in desc and "meta-text" in desc
    assert "⚠ meta-text and refusals" in first_section(res)


def test_self_reward_card_reads_parse_failures_and_agreement_from_the_candidates():
    from prefdata.generators import self_reward

    def fn(req, s):
        text = req.messages[-1]["content"]
        if "additive scale" in text:  # candidate j: no score line, then j + 1, then j + 2
            j = int(re.search(r"Candidate answer (\d)", text).group(1))
            return ("no score here", "length") if s == 0 else (f"Score: {j + s}", "stop")
        return f"Candidate answer {s} with its own words {'x ' * s}", "stop"

    cfg = self_reward.SelfRewardConfig(n_candidates=3, judgements=3)
    res = self_reward.run_step(cfg, prompts(2), Ctx(Engine(fn)))
    q = res.report["quality"]
    assert q["parsed_outputs"] == 18 and q["unparsed"] == 6  # every first judgement has no score line
    assert q["repeat_pairs"] == 6 and q["repeat_agree"] == 0  # the other two always differ
    assert q["answers"] == 2 * len(res.tables["train"]) and q["finish_known"] == q["answers"]
    assert {"parse failures", "judge self-agreement"} <= warned(q)
    assert res.lineage["description"] == headline(q)


def test_bpo_evaluation_of_identical_answers_says_so():
    from prefdata.generators import bpo

    rows = pa.Table.from_pylist([{"id": f"p{i}", "prompt": [{"role": "user", "content": f"Explain thing {i}"}],
                                  "optimized_prompt": f"Explain thing {i} clearly and briefly."} for i in range(4)])

    def fn(req, s):
        if "Winner" in req.messages[-1]["content"]:
            return "Winner: A", "stop"  # position bias: a tie after swapping
        return "The same answer whatever the prompt.", "length"

    res = bpo._step_evaluate(bpo.EvaluateConfig(), rows, Ctx(Engine(fn)))
    q = res.report["quality"]
    assert q["kind"] == "answers" and q["identical"] == 4 and q["uncertain"] == 4
    assert {"identical pairs", "uncertain labels", "truncation", "judge self-agreement"} <= warned(q)
    assert "4 of 4 prompts identical or near-identical" in res.lineage["description"]


def test_rejection_sampling_card_has_the_verdict():
    from prefdata.generators import rejection

    def fn(req, s):
        text = req.messages[-1]["content"]
        if "additive scale" in text:  # score-first: the judge writes the number after "Score: "
            return re.search(r"Candidate (\d)", text).group(1), "stop"
        return f"Candidate {s}: " + "word " * (s + 1), "stop" if s % 2 else "length"

    cfg = rejection.RejectionSamplingConfig(n_candidates=4)
    res = rejection.run_step(cfg, prompts(3), Ctx(Engine(fn)))
    q = res.report["quality"]
    assert q["rows"] == len(res.tables["train"]) == 3  # best (3, "stop") vs worst (0, "length") per prompt
    assert (q["answers"], q["finish_known"], q["truncated"]) == (6, 6, 3) and "truncation" in warned(q)
    assert q["parsed_outputs"] == 12 and q["unparsed"] == 0 and "repeat_pairs" in q
    assert res.lineage["description"] == headline(q) and res.card_sections[0][0] == "Quality verdict"


# ----------------------------------------------------------------------------- end to end on the tiny model


def test_rlcd_pipeline_on_the_tiny_model_opens_its_card_with_the_verdict(tiny_model, capsys):
    """Random weights at 8 new tokens never stop on their own: every answer is cut off. Two shards of
    two rows: the first line is measured over both (the step saw one at a time)."""
    from prefdata.pipeline import run_pipeline

    repo = Path(__file__).resolve().parents[1]
    out = run_pipeline(repo / "pipelines" / "rlcd_helpful.yaml",
                       [f"engine.model={tiny_model}", "steps.rlcd.limit=4", "steps.rlcd.config.max_tokens=8",
                        "steps.rlcd.config.max_retries=1", "steps.rlcd.shard_rows=2"])
    v = out["rlcd"]
    q = v.manifest["lineage"]["report"]["quality"]
    rows = v.manifest["splits"]["train"]["rows"]
    assert q["rows"] == rows and q["answers"] == 2 * rows and q["finish_known"] == 2 * rows
    assert q["truncated"] == 2 * rows
    card = v.card_path.read_text().split("\n")
    title = card.index(f"# {v.ref}")
    first = next(line for line in card[title + 1:] if line.strip())
    assert first == headline(q) == v.manifest["lineage"]["description"]
    assert first.startswith("Quality: ") and "100% of answers cut off at max_tokens" in first
    assert rows == 4 and first.endswith("(4 pairs checked).")  # both shards, not the first one's 2
    assert "## Quality verdict (first shard)" in "\n".join(card)
    err = capsys.readouterr().err.strip().splitlines()
    line = next(x for x in err if x.startswith("✓ rlcd:"))
    assert line.endswith("; quality: " + first[len("Quality: "):])
