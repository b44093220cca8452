"""Generators with a scripted engine: prompt construction, parsing, pairing, ties, drops, filters, cards.

Judges have their own file (test_judges.py); each YAML runs end to end in test_generators_e2e.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import pyarrow as pa
import pytest

from prefdata.engines.base import ChatRequest, Completion
from prefdata.generators import bpo, conditional, rlcd, self_reward
from prefdata.generators.common import pair_table
from prefdata.schema import validate


class Scripted:
    """`fn(request, sample_index) -> text`; records every request. Log-likelihoods from `lp`."""

    name, model_id = "scripted", "scripted-model"

    def __init__(self, fn, lp=None):
        self.fn, self.lp, self.requests = fn, lp, []

    def generate(self, requests, params):
        self.requests += requests
        return [[Completion(text=self.fn(r, s), finish_reason="stop") for s in range(params.n)] for r in requests]

    def score(self, requests, completions):
        return [self.lp(r, c) for r, c in zip(requests, completions)]


@dataclass
class Ctx:
    """What a step function uses of the pipeline's StepContext."""

    eng: Scripted
    seed: int = 0
    overrides: list = field(default_factory=list)

    def engine(self, override=None):
        self.overrides.append(override)
        return self.eng


def prompts(n=3):
    return pa.Table.from_pylist([{"id": f"p{i}", "prompt": [{"role": "user", "content": f"How do I do task {i} well?"}]}
                                 for i in range(n)])


def last(req: ChatRequest) -> str:
    return req.messages[-1]["content"]


def check_pairs(table: pa.Table) -> None:
    core = ("id", "prompt", "chosen", "rejected", "source", "margin", "label_prob", "flipped", "meta")
    validate(table.select([c for c in table.column_names if c in core]), "pair")


# ----------------------------------------------------------------------------- self-reward


def _self_reward_engine(req: ChatRequest, s: int) -> str:
    text = last(req)
    if "additive scale" in text:
        answer = text.split("Assistant reply:\n")[1].split("\n\nWrite at most")[0]
        q = int(re.search(r"task (\d)", text).group(1))
        if q == 1:
            return "Fine.\nScore: 3"  # every candidate ties -> no pair
        if q == 2:
            return "I like it a lot."  # nothing parseable -> no pair
        if answer.endswith("#3") and s == 0:
            return "no score line"  # unparseable: null, left out of the mean
        return f"ok\nScore: {int(answer[-1]) + 1}"
    return f"Candidate answer to the request number #{s}"


def test_self_reward_pairs_best_vs_worst_ties_and_unparseable():
    report = {}
    pairs, cands = self_reward.generate(prompts(3), Scripted(_self_reward_engine), self_reward.SelfRewardConfig(),
                                        report=report)
    check_pairs(pairs)
    assert len(pairs) == 1 and report["drop_reasons"] == {"tie between best and worst": 1,
                                                          "fewer than 2 candidates with a parseable score": 1}
    row = pairs.to_pylist()[0]
    assert row["chosen"][0]["content"].endswith("#3") and row["rejected"][0]["content"].endswith("#0")
    assert row["chosen_score"] == 4.0 and row["rejected_score"] == 1.0 and row["margin"] == 3.0
    assert cands.num_rows == 12 and cands.schema == self_reward.CANDIDATES
    c3 = [c for c in cands.to_pylist() if c["prompt_id"] == "p0" and c["completion"][0]["content"].endswith("#3")][0]
    assert c3["judge_scores"] == [None, 4.0, 4.0] and c3["judgements"][0] == "no score line" and c3["score"] == 4.0
    p2 = [c for c in cands.to_pylist() if c["prompt_id"] == "p2"]
    assert all(c["score"] is None and c["judge_scores"] == [None] * 3 for c in p2)
    assert report["tie_rate"] == round(1 / 3, 4) and report["unparseable_rate"] == round(13 / 36, 4)


def test_self_reward_degenerate_candidates_are_kept_but_never_paired():
    def engine(req, s):
        if "additive scale" in last(req):
            return "Score: 5" if "repeat" in last(req) else "Score: 1" if "#1" in last(req) else "Score: 3"
        return "repeat " * 30 if s == 0 else f"A fine answer #{s}"

    pairs, cands = self_reward.generate(prompts(1), Scripted(engine), self_reward.SelfRewardConfig(n_candidates=3))
    assert cands.column("filtered").to_pylist() == ["repetitive", None, None]
    assert pairs.column("chosen").to_pylist()[0][0]["content"] == "A fine answer #2"  # not the looping 5-pointer


def test_judge_agreement():
    assert self_reward.judge_agreement([[4.0, 4.0, 2.0], [None, 3.0, 3.0]]) == {"exact_agreement": 0.5,
                                                                                "mean_within_std": 0.4714}
    assert self_reward.judge_agreement([[None, 1.0]]) == {"exact_agreement": None, "mean_within_std": None}


def test_self_reward_empty_input_and_step_card():
    pairs, cands = self_reward.generate(prompts(1).slice(0, 0), Scripted(_self_reward_engine))
    assert len(pairs) == 0 and cands.schema == self_reward.CANDIDATES
    res = self_reward.run_step(self_reward.SelfRewardConfig(), prompts(3), Ctx(Scripted(_self_reward_engine)))
    titles = [t for t, _ in res.card_sections]
    assert {"Judge statistics", "Drop reasons", "Examples"} <= set(titles) and "Rows per source" not in titles
    stats = dict(res.card_sections)["Judge statistics"]
    assert "unparseable rate" in stats and "exact agreement" in stats and "distribution" in stats
    assert set(res.figures) == {"judge_scores", "lengths"} and res.side_tables["candidates"][0] == "completion"
    assert res.lineage["templates"]["rubric_judge"] == "rubric-judge-2"


# ----------------------------------------------------------------------------- conditional

IMPROVED = "An improved, more specific reply for you."


def _editor(req, s):
    text = last(req)
    if "Draft reply" in text:
        if "task 2" in text:
            return "I changed stuff but forgot the tags"
        return f"<aspects>Helpfulness and relevance</aspects><response>{IMPROVED}</response>"
    return "A first draft reply to the request."


def test_conditional_labels_by_direction_and_drops_unparseable():
    report = {}
    eng = Scripted(_editor)
    out = conditional.generate(prompts(3), eng, conditional.ConditionalConfig(max_retries=1), report=report)
    check_pairs(out)
    assert len(out) == 2 and report["drop_reasons"] == {
        "unparseable edit (missing <aspects>…</aspects> or <response>…</response>)": 1}
    for r in out.to_pylist():
        meta = json.loads(r["meta"])
        assert meta["aspects"] == ["helpfulness", "relevance"] and meta["guideline_version"] == "aspects-1"
        assert (r["chosen"][0]["content"] == IMPROVED) == (meta["direction"] == "better")
        assert r["label_prob"] == 1.0
    edit = [last(r) for r in eng.requests if "Draft reply" in last(r)][0]
    assert "A first draft reply" in edit and "helpfulness, relevance, completeness, honesty, harmlessness" in edit
    assert "<aspects>" in edit and "<response>" in edit


@pytest.mark.parametrize("text,why", [
    ("<aspects>helpfulness</aspects><response>cut off at max tok", "unparseable"),  # no closing tag
    ("<response>A reply.</response>", "unparseable"),
    ("<aspects>style, tone</aspects><response>A reply.</response>", "names no aspect"),
    ("<aspects>honesty</aspects><response> </response>", "edited response empty"),
])
def test_conditional_parse_failures_have_reasons(text, why):
    aspects, resp, reason = conditional.parse_edit(text, conditional.GUIDELINES["chat"])
    assert aspects is None and resp is None and why in reason


def test_conditional_directions_are_seeded_per_example():
    d = [conditional.direction(f"p{i}", 0, 0.5) for i in range(200)]
    assert d == [conditional.direction(f"p{i}", 0, 0.5) for i in range(200)]  # same seed, same draws
    assert d != [conditional.direction(f"p{i}", 1, 0.5) for i in range(200)]  # the seed matters
    assert 70 < d.count("better") < 130
    assert {conditional.direction(f"p{i}", 0, 1.0) for i in range(50)} == {"better"}
    assert {conditional.direction(f"p{i}", 0, 0.0) for i in range(50)} == {"worse"}
    # A row's direction does not depend on its position in the input.
    a = conditional.generate(prompts(4), Scripted(_editor), seed=5)
    b = conditional.generate(prompts(4).take([3, 2, 1, 0]), Scripted(_editor), seed=5)
    key = {json.loads(m)["prompt_id"]: json.loads(m)["direction"] for m in a.column("meta").to_pylist()}
    assert key == {json.loads(m)["prompt_id"]: json.loads(m)["direction"] for m in b.column("meta").to_pylist()}


def test_conditional_seeded_aspects_mode_and_identical_edit():
    def engine(req, s):
        text = last(req)
        if "Draft reply" in text:
            assert "Reply with the rewritten reply only" in text
            return "A first draft reply to the request." if "task 3" in text else "A rewritten reply that differs."
        return "A first draft reply to the request."

    report = {}
    out = conditional.generate(prompts(4), Scripted(engine), conditional.ConditionalConfig(aspect_choice="seeded"),
                               report=report)
    assert len(out) == 3 and report["drop_reasons"] == {"edit identical to the draft": 1}
    for r in out.to_pylist():
        meta = json.loads(r["meta"])
        assert 1 <= len(meta["aspects"]) <= 3 and set(meta["aspects"]) <= set(conditional.GUIDELINES["chat"])
        assert meta["aspects"] == conditional.seeded_aspects(meta["prompt_id"], 0, conditional.GUIDELINES["chat"])


def test_conditional_custom_and_summarization_guidelines():
    eng = Scripted(lambda r, s: "<aspects>Brevity</aspects><response>Shorter.</response>" if "Draft" in last(r) else "Long draft.")
    cfg = conditional.ConditionalConfig(guideline="mine", guidelines={"mine": ["Brevity", "tone"]})
    out = conditional.generate(prompts(1), eng, cfg)
    assert json.loads(out.column("meta")[0].as_py())["aspects"] == ["Brevity"]
    assert json.loads(out.column("meta")[0].as_py())["guideline_version"] == "custom"
    eng = Scripted(lambda r, s: "<aspects>coverage</aspects><response>Summary.</response>" if "Draft" in last(r) else "Sum.")
    out = conditional.generate(prompts(1), eng, conditional.ConditionalConfig(guideline="summarization"))
    assert "coherence, accuracy, coverage" in last(eng.requests[-1]) and len(out) == 1
    with pytest.raises(Exception, match="not found"):
        conditional.generate(prompts(1), eng, conditional.ConditionalConfig(guideline="poetry"))
    with pytest.raises(Exception):
        conditional.ConditionalConfig(guidelines={"empty": []})
    with pytest.raises(Exception):
        conditional.ConditionalConfig(colour="blue")  # unknown keys are errors


def test_conditional_step_card():
    res = conditional.run_step(conditional.ConditionalConfig(), prompts(3), Ctx(Scripted(_editor)))
    sections = dict(res.card_sections)
    assert "directions:" in sections["Directions and aspects"] and "unparseable" in sections["Drop reasons"]
    assert "Rows per source" not in sections and "lengths" in res.figures
    assert res.lineage["templates"] == {"conditional": "conditional-edit-1", "aspect_guidelines": "aspects-1"}


# ----------------------------------------------------------------------------- BPO

GRAVITY = pair_table([{"prompt": [{"role": "user", "content": "Explain gravity to me"}],
                       "chosen": [{"role": "assistant", "content": "Gravity pulls masses together."}],
                       "rejected": [{"role": "assistant", "content": "No."}], "source": "hh"}])


@pytest.mark.parametrize("text,why", [
    ("<comparison>x</comparison>", "unparseable"),
    ("<optimized>Explain it.</optimized>", "unparseable"),
    ("<comparison>x</comparison><optimized>  </optimized>", "empty"),
    ("<comparison>x</comparison><optimized>do <end> it</optimized>", "leftover"),
    ("<comparison>x</comparison><optimized>Explain [INST] it</optimized>", "leftover"),
    ("<comparison>x</comparison><optimized>Explain it <|im_end|></optimized>", "leftover"),
])
def test_bpo_parse_failures(text, why):
    assert why in bpo.parse_construct(text)[2]


def test_bpo_parse_and_length_filters():
    comp, opt, why = bpo.parse_construct("<comparison>A is correct</comparison>\n<optimized>Explain X step by step."
                                         "</optimized>\n<end>")
    assert (comp, opt, why) == ("A is correct", "Explain X step by step.", None)
    assert "orig/opt > 2" in bpo.length_filter("one two three four five", "one two")
    assert bpo.length_filter("one two three four", "one two") is None  # exactly 2 is kept
    assert "opt/orig > 6" in bpo.length_filter("hi there", " ".join(["w"] * 13))
    assert bpo.length_filter("hi there", " ".join(["w"] * 12)) is None  # exactly 6 is kept


def _bpo_engine(req, s):
    t = last(req)
    if "Good reply" in t:
        if "Nonsense" in t:
            return "<comparison>meh</comparison><optimized>Please could you explain to me, in great detail and with " \
                   "many examples, every single aspect of the following question</optimized>"
        return "<comparison>The good reply explains.</comparison><optimized>Explain gravity to me in simple terms." \
               "</optimized><end>"
    if "Rewrite the instruction" in t:
        return "Explain gravity to me clearly, with an everyday example."
    if "Compare two assistant replies" in t:
        a = t.split("Reply A:\n")[1].split("\n\nReply B")[0]
        return "Winner: A" if "example" in a else "Winner: B"
    return "Answer with an example." if "example" in t else "Answer."


def test_bpo_construct_rewrite_evaluate():
    eng = Scripted(_bpo_engine)
    pairs = pa.concat_tables([GRAVITY, pair_table([{"prompt": [{"role": "user", "content": "Nonsense"}],
                                                    "chosen": [{"role": "assistant", "content": "ok"}],
                                                    "rejected": [{"role": "assistant", "content": "no"}],
                                                    "source": "hh"}])])
    report = {}
    built = bpo.construct(pairs, eng, report=report)
    assert built.schema == bpo.BPO_ROWS and built.column("optimized_prompt").to_pylist() == [
        "Explain gravity to me in simple terms."]
    assert built.column("comparison").to_pylist() == ["The good reply explains."] and "<end>" in built.column("raw")[0].as_py()
    assert report["drop_reasons"] == {"optimized prompt too long (opt/orig > 6)": 1}
    construct_req = last(eng.requests[0])
    assert "Gravity pulls masses together." in construct_req and "Bad reply:\nNo." in construct_req
    rew = bpo.rewrite(pairs.select(["id", "prompt"]).slice(0, 1), eng)
    assert "everyday example" in rew.column("optimized_prompt").to_pylist()[0]
    table, stats = bpo.evaluate(rew, eng, eng)
    assert stats == {"win": 1.0, "tie": 0.0, "loss": 0.0, "n": 1} and table.column("optimized_wins").to_pylist() == [1.0]


def test_bpo_rewrite_filters_and_empty_outputs():
    def engine(req, s):
        return "Sure! <|im_end|> Explain gravity" if "gravity" in last(req) else "Hi"

    report = {}
    table = pa.concat_tables([GRAVITY.select(["id", "prompt"]), pa.Table.from_pylist(
        [{"id": "long", "prompt": [{"role": "user", "content": "Tell me about the history of the Roman empire please"}]}],
        schema=GRAVITY.select(["id", "prompt"]).schema)])
    out = bpo.rewrite(table, Scripted(engine), report=report)
    assert len(out) == 0 and out.schema == bpo.REWRITE_ROWS
    assert report["drop_reasons"] == {"leftover markers in the rewrite": 1, "optimized prompt too short (orig/opt > 2)": 1}
    assert len(bpo.construct(GRAVITY.slice(0, 0), Scripted(engine))) == 0


def test_bpo_two_step_construct():
    def engine(req, s):
        t = last(req)
        if t.endswith("correctness, helpfulness and harmlessness."):
            return "The good reply explains; the bad one refuses."
        if "Write only the rewritten instruction" in t:
            assert "The good reply explains" in t
            return "Explain gravity to me in simple terms."
        raise AssertionError(t)

    out = bpo.construct(GRAVITY, Scripted(engine), bpo.ConstructConfig(format="two_step"))
    row = out.to_pylist()[0]
    assert row["optimized_prompt"] == "Explain gravity to me in simple terms." and "refuses" in row["comparison"]
    assert row["source"] == "hh" and json.loads(row["meta"])["format"] == "two_step"


def test_bpo_steps_cards_and_rewriter_engine():
    ctx = Ctx(Scripted(_bpo_engine))
    res = bpo._step_construct(bpo.ConstructConfig(), GRAVITY, ctx)
    assert res.kind == "bpo" and "length_ratio" in res.figures and "Explain gravity" in dict(res.card_sections)["Examples"]
    res = bpo._step_rewrite(bpo.RewriteConfig(rewriter_model="/models/my-rewriter"), GRAVITY.select(["id", "prompt"]), ctx)
    assert ctx.overrides[-1] == {"backend": "transformers", "model": "/models/my-rewriter"}
    assert res.lineage["templates"] == {"bpo_rewriter": "bpo-rewriter-1"}
    res = bpo._step_evaluate(bpo.EvaluateConfig(), res.tables["train"], ctx)
    assert "| win | 100.0% |" in dict(res.card_sections)["BPO evaluation (pairwise, position-swapped)"]


# ----------------------------------------------------------------------------- RLCD-Rescore


def _rlcd_engine(req, s):
    return f"Some reply ({req.messages[0]['content'][-30:]}) for you."


def test_rlcd_rescore_keeps_order_dependent_verdicts_as_half_ties():
    def engine(req, s):
        if "Compare two assistant replies" in last(req):
            return "Winner: A"  # position-biased: always a tie after swapping
        return _rlcd_engine(req, s)

    report = {}
    out = rlcd.generate(prompts(2), Scripted(engine), rlcd.RLCDConfig(rescore=True), report=report)
    check_pairs(out)
    assert out.column("label_prob").to_pylist() == [0.5, 0.5] and report["rescore"] == {"tie": 2}
    meta = json.loads(out.column("meta")[0].as_py())
    assert meta["rescore"] == "tie" and meta["rescore_raw"] == ["Winner: A", "Winner: A"]


def test_rlcd_rescore_logprob_agrees_swaps_or_ties():
    def engine(req, s):  # the reply names the descriptor it was written under
        return f"A reply that is {req.messages[0]['content'].split('must be ')[1].rstrip('.')}."

    _, sets = rlcd.tpl.load_principles()
    pos = {f"p{i}": sets["helpful"][rlcd.pair_index(f"p{i}", 0, len(sets["helpful"]))][0] for i in range(3)}

    def lp(req, completion):
        text = last(req)
        a = text.split("Reply A:\n")[1].split("\n\nReply B")[0]
        task = re.search(r"task (\d)", text).group(1)
        if task == "2":  # a position-biased judge on this prompt: flips with the order
            return -1.0 if completion == " A" else -2.0
        a_is_positive = a == f"A reply that is {pos['p' + task]}."
        wants_a = a_is_positive if task == "0" else not a_is_positive  # p1: the judge prefers o-
        return -1.0 if (completion == " A") == wants_a else -2.0

    cfg = rlcd.RLCDConfig(rescore=True, rescore_method="logprob", principle_set="helpful")
    eng = Scripted(engine, lp=lp)
    report = {}
    out = rlcd.generate(prompts(3), eng, cfg, report=report)
    rows = {json.loads(r["meta"])["prompt_id"]: r for r in out.to_pylist()}
    assert json.loads(rows["p0"]["meta"])["rescore"] == "agree" and rows["p0"]["label_prob"] == 1.0
    assert rows["p1"]["flipped"] and rows["p1"]["chosen"][0]["content"] != f"A reply that is {pos['p1']}."
    assert rows["p2"]["label_prob"] == 0.5 and json.loads(rows["p2"]["meta"])["rescore"] == "tie"
    assert report["rescore"] == {"agree": 1, "judge prefers the negative output": 1, "tie": 1}
    res = rlcd.run_step(cfg, prompts(3), Ctx(eng))
    assert "| tie | 1 |" in dict(res.card_sections)["RLCD-Rescore"]
    assert res.lineage["templates"]["pairwise_judge"] == "pairwise-judge-2+logprob"


# ----------------------------------------------------------------------------- the generator skeleton


def test_every_generator_config_extends_the_shared_sampling_fields():
    from prefdata.engines.base import SamplingParams
    from prefdata.generators.common import SamplingConfig

    for cfg in (rlcd.RLCDConfig, conditional.ConditionalConfig, self_reward.SelfRewardConfig, bpo.ConstructConfig,
                bpo.RewriteConfig, bpo.EvaluateConfig):
        assert issubclass(cfg, SamplingConfig) and {"temperature", "top_p", "max_tokens"} <= set(cfg.model_fields)
        with pytest.raises(Exception):
            cfg(temperature=3.0)  # the shared range holds in every generator
    # The same SamplingParams (and so the same cache keys) as each generator built by hand before.
    stop = ("\nHuman:", "\nUser:", "\n\nHuman")
    assert rlcd.RLCDConfig().sampling(3, stop=stop) == SamplingParams(n=1, temperature=1.0, top_p=1.0, max_tokens=128,
                                                                      stop=stop, seed=3)
    assert self_reward.SelfRewardConfig().sampling(0, n=4) == SamplingParams(n=4, temperature=0.7, top_p=0.9,
                                                                             max_tokens=128, seed=0)
    assert bpo.EvaluateConfig().sampling(1) == SamplingParams(temperature=0.0, top_p=1.0, max_tokens=128, seed=1)
    assert bpo.RewriteConfig().sampling(0) == SamplingParams(temperature=0.6, top_p=0.9, max_tokens=192, seed=0)


def test_committed_generator_cards_list_sources_once_and_keep_both_score_plots():
    """The store card shows rows per source itself; a generator section repeated it. self_reward's
    candidate-score plot was saved as scores.png, which the card's pair-score histogram overwrote."""
    from prefdata import store

    res = self_reward.run_step(self_reward.SelfRewardConfig(), prompts(3), Ctx(Scripted(_self_reward_engine)))
    v = store.commit("sr-card", res.tables, card_sections=res.card_sections, figures=res.figures,
                     lineage={"templates": res.lineage["templates"]})
    card = (v.path / "README.md").read_text()
    assert card.count("| source | rows |") == 1 and "Rows per source" not in card
    assert "![judge_scores](judge_scores.png)" in card and "![scores](scores.png)" in card
    assert (v.path / "judge_scores.png").read_bytes() != (v.path / "scores.png").read_bytes()
    for step_result in (rlcd.run_step(rlcd.RLCDConfig(), prompts(2), Ctx(Scripted(_rlcd_engine))),
                        conditional.run_step(conditional.ConditionalConfig(), prompts(3), Ctx(Scripted(_editor))),
                        bpo._step_construct(bpo.ConstructConfig(), GRAVITY, Ctx(Scripted(_bpo_engine)))):
        titles = [t for t, _ in step_result.card_sections]
        assert "Rows per source" not in titles and titles[-1] == "Examples"
        assert not any("| source | rows |" in text for _, text in step_result.card_sections)


# ----------------------------------------------------------------------------- RLCD-Rescore ties (issue 13, item 7)


def test_rlcd_rescore_tie_is_half_not_null():
    from prefdata.engines.scripted import ScriptedEngine
    from prefdata.generators.rlcd import rescore

    rows = [{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "x"}],
             "rejected": [{"role": "assistant", "content": "y"}], "label_prob": 1.0, "meta": {}}]
    rescore(rows, ScriptedEngine(["Winner: A"]), seed=0)  # A in both orders: the verdict follows the position
    assert rows[0]["meta"]["rescore"] == "tie" and rows[0]["label_prob"] == 0.5
