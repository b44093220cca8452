"""A jury of judges (prefdata/judges/jury.py) and its bias figures (prefdata/evals/judge.py), with
scripted judges whose position bias, length bias, ties and self-preference are known, so every
figure is checked against a hand count."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prefdata import store
from prefdata.engines import overrides_dict
from prefdata.engines.scripted import ScriptedEngine
from prefdata.errors import ConfigError
from prefdata.evals.judge import evaluate, format_report
from prefdata.judges.jury import JurorConfig, JuryConfig, jury_votes, load_jury, majority, run_jury
from prefdata.schema import validate
from prefdata.testing import run_cli

# 8 pairs; the chosen answer is longer in pairs 0-4 (5 of 8), shorter in 5-7. The judge model "judge-m"
# wrote the chosen answer of pairs 0-3 and the rejected answer of pairs 4-7.
N = 8


def _rows() -> list[dict]:
    rows = []
    for i in range(N):
        long, short = f"long answer number {i} " + "with many extra words " * 3, f"short {i}"
        chosen, rejected = (long, short) if i < 5 else (short, long)
        own_chosen = i < 4
        rows.append({"id": f"q{i}", "prompt": f"question {i}?", "chosen": chosen, "rejected": rejected,
                     "chosen_model": "judge-m" if own_chosen else "other", "rejected_model": "other" if own_chosen
                     else "judge-m", "label_prob": 0.9})
    return rows


ROWS = _rows()
CHOSEN = {r["chosen"] for r in ROWS}
OWN = {r["chosen"] if r["chosen_model"] == "judge-m" else r["rejected"] for r in ROWS}


def _shown(req) -> tuple[str, str]:
    """(answer shown as A, answer shown as B), found by position in the judge's prompt."""
    text = req.messages[-1]["content"]
    answers = [a for r in ROWS for a in (r["chosen"], r["rejected"]) if a in text]
    answers.sort(key=text.index)
    return answers[0], answers[-1]


def _judge(pick) -> ScriptedEngine:
    """A scripted judge: `pick(a, b)` returns 'A', 'B', 'tie' or None (an unparseable ramble)."""
    def answer(req, _):
        p = pick(*_shown(req))
        return "I cannot say." if p is None else f"Some reasoning.\nWinner: {p}"
    return answer


JUDGES = {
    "always-a": lambda a, b: "A",  # pure position bias
    "longer": lambda a, b: "A" if len(a) > len(b) else "B",  # pure length bias
    "oracle": lambda a, b: "A" if a in CHOSEN else "B",  # agrees with the labels
    "self": lambda a, b: "A" if a in OWN else "B",  # always prefers the answer it wrote
    "tie-first-two": lambda a, b: "tie" if {"short 0", "short 1"} & {a, b} else ("A" if a in CHOSEN else "B"),
    "mute": lambda a, b: None,
}


@pytest.fixture(autouse=True)
def _eval_judge_mounted():
    """`eval judge` on the real CLI, also before prefdata/cli.py mounts it (register is idempotent)."""
    from prefdata import cli
    from prefdata.evals.judge import register

    cli._mount()
    register(cli.app)


def _engine_for(overrides: dict):
    model = overrides["model"]
    return ScriptedEngine(_judge(JUDGES[model]), model_id="judge-m" if model == "self" else model)


def _table():
    return validate(ROWS, "pair")


def _prompts_xs_ys(table):
    from prefdata.judges.jury import judge_inputs

    return judge_inputs(table)


def _report(*names: str) -> dict:
    table = _table()
    jury = JuryConfig(judges=[JurorConfig(engine={"model": n}) for n in names])
    verdicts = run_jury(jury, _engine_for, *_prompts_xs_ys(table), progress=False)
    return evaluate(verdicts, table)


def test_position_biased_judge_is_never_consistent():
    j = _report("always-a")["judges"][0]
    assert j["position_consistency"] == 0.0 and j["first_position_rate"] == 1.0
    assert j["tie_rate"] == 1.0 and j["ties"] == {"explicit": 0.0, "order_dependent": 1.0, "unparsed": 0.0}
    assert j["accuracy"] is None and j["accuracy_tie_half"] == 0.5 and j["length"]["pairs"] == 0


def test_length_biased_judge_against_the_base_rate():
    j = _report("longer")["judges"][0]
    assert j["position_consistency"] == 1.0 and j["first_position_rate"] == 0.5 and j["tie_rate"] == 0.0
    # It picks the longer answer: right on the 5 pairs where the chosen is longer.
    assert j["accuracy"] == pytest.approx(5 / 8)
    assert j["length"] == {"pairs": 8, "longer_wins": 1.0, "base_rate": 0.625, "bias": 0.375}


def test_oracle_judge_shows_the_base_rate_and_no_bias():
    j = _report("oracle")["judges"][0]
    assert j["accuracy"] == 1.0 and j["accuracy_tie_half"] == 1.0
    assert j["length"] == {"pairs": 8, "longer_wins": 0.625, "base_rate": 0.625, "bias": 0.0}
    assert j["self_preference"]["measured"] is False  # "oracle" wrote none of the answers


def test_explicit_ties_and_unparseable_outputs():
    j = _report("tie-first-two")["judges"][0]
    # Pairs q0 and q1: 'tie' in both orders (consistent, and a tie); elsewhere the oracle.
    assert j["tie_rate"] == 0.25 and j["ties"]["explicit"] == 0.25 and j["position_consistency"] == 1.0
    assert j["accuracy"] == 1.0 and j["accuracy_tie_half"] == (6 + 2 * 0.5) / 8 and j["decided"] == 6
    # Base rate on the 6 decided pairs (q2..q7): chosen longer on q2, q3, q4 = 3 of 6.
    assert j["length"] == {"pairs": 6, "longer_wins": 0.5, "base_rate": 0.5, "bias": 0.0}
    m = _report("mute")["judges"][0]
    assert m["position_consistency"] is None and m["ties"]["unparsed"] == 1.0 and m["tie_rate"] == 1.0


def test_self_preference_of_a_judge_that_wrote_half_the_answers():
    j = _report("self")["judges"][0]
    assert j["model"] == "judge-m"
    # Its own answer is the chosen on q0-q3 and the rejected on q4-q7: it picks its own every time,
    # the labels pick it half the time.
    assert j["self_preference"] == {"measured": True, "pairs": 8, "picks_own": 1.0, "labels_pick_own": 0.5,
                                    "excess": 0.5}
    assert j["accuracy"] == 0.5


def test_a_judge_that_wrote_both_answers_is_not_scored_for_self_preference():
    table = validate([{k: v for k, v in r.items() if k not in ("chosen_model", "rejected_model")} for r in ROWS], "pair")
    jury = JuryConfig(judges=[JurorConfig(engine={"model": "self"})])
    v = run_jury(jury, _engine_for, *_prompts_xs_ys(table), progress=False)
    sp = evaluate(v, table, generator="judge-m")["judges"][0]["self_preference"]
    assert sp["measured"] is False and sp["judge_wrote_both"] == 8 and "cannot be told" in sp["note"]
    sp = evaluate(v, table, generator=None)["judges"][0]["self_preference"]
    assert sp == {"measured": False, "note": "the data does not record which model wrote the answers"}


def test_jury_majority_and_votes_as_one_family():
    r = _report("oracle", "longer", "always-a")
    # oracle +1 everywhere; longer +1 on q0-q4, -1 on q5-q7; always-a 0: the jury decides q0-q4 only.
    assert r["jury"]["tie_rate"] == pytest.approx(3 / 8) and r["jury"]["accuracy"] == 1.0
    assert "jury (majority)" in format_report(r)
    table = _table()
    jury = JuryConfig(judges=[JurorConfig(engine={"model": n}) for n in ("oracle", "longer", "always-a")])
    votes = jury_votes(table, jury, _engine_for, progress=False)
    assert list(votes) == ["jury:0", "jury:1", "jury:2"]
    np.testing.assert_array_equal(votes["jury:0"], np.ones(N))
    np.testing.assert_array_equal(votes["jury:1"], [1, 1, 1, 1, 1, -1, -1, -1])
    np.testing.assert_array_equal(votes["jury:2"], np.zeros(N))
    from prefdata.curation.vote import family_of

    assert {family_of(v) for v in votes} == {"jury"}  # one voter family, three members
    from prefdata.curation.vote import combine

    post = combine(table.column("id").to_pylist(), votes, ell=None, length_control=False)
    assert post.families == ["jury"] and post.raw.shape == (N, 1)
    v = run_jury(jury, _engine_for, *_prompts_xs_ys(table), progress=False)
    assert majority(v) == [1.0] * 5 + [None] * 3
    made = []
    same = JuryConfig(judges=[JurorConfig(engine={"model": "oracle"}), JurorConfig(engine={"model": "oracle"},
                                                                                    name="again")])
    v = run_jury(same, lambda o: made.append(o) or _engine_for(o), *_prompts_xs_ys(table), progress=False)
    assert len(made) == 1 and [j.name for j in v] == ["oracle", "again"]  # one engine for both jurors


def test_cli_eval_judge_prints_the_figures_and_json(tmp_path, capsys, monkeypatch):
    import prefdata.evals.judge as ej

    monkeypatch.setattr(ej, "make_engine", _engine_for)
    store.commit("jt", _table(), kind="pair")
    code, out, err = run_cli(capsys, "eval", "judge", "--dataset", "jt@v1", "--judge", "longer",
                             "--judge", "openai:oracle", "--json", "--out", tmp_path / "r.json")
    assert code == 0, err
    r = json.loads(out)
    assert [j["judge"] for j in r["judges"]] == ["longer", "oracle"]
    assert r["judges"][0]["length"]["bias"] == 0.375 and r["judges"][1]["accuracy"] == 1.0
    full = json.loads((tmp_path / "r.json").read_text())
    assert r["schema"] == full["schema"] == "prefdata.eval.judge/1"
    assert len(full["rows"]) == N and full["rows"][0]["verdicts"][0]["first"] == "a"
    code, out, err = run_cli(capsys, "eval", "judge", "--dataset", "jt@v1", "--judge", "always-a")
    assert code == 0, err
    assert "| `always-a` | 0.0% | 100.0% | 100.0% | n/a |" in out


def test_jury_yaml_and_its_errors(tmp_path, capsys, monkeypatch):
    good = tmp_path / "jury.yaml"
    good.write_text("judges:\n  - engine: {backend: openai, model: oracle}\n    name: big\n"
                    "  - engine: {model: longer}\n    method: logprob\nseed: 3\n")
    jury = load_jury([str(good), "vllm:x/y"])
    assert [j.name for j in jury.judges] == ["big", None, None] and jury.seed == 3
    assert jury.judges[1].method == "logprob" and overrides_dict(jury.judges[2].engine) == {"backend": "vllm", "model": "x/y"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("judges:\n  - engine: {model: oracle}\n    temprature: 0.5\n")
    import prefdata.evals.judge as ej

    monkeypatch.setattr(ej, "make_engine", _engine_for)
    store.commit("jt", _table(), kind="pair")
    code, _, err = run_cli(capsys, "eval", "judge", "--dataset", "jt@v1", "--judge", bad)
    assert code != 0 and str(bad) in err and "judges.0.temprature" in err and "Traceback" not in err
    # The engine block is typed (EngineOverrides): a bad value or a misspelt key fails at load, naming
    # the file and the key's path, before any engine is built.
    bad.write_text("judges:\n  - engine: {model: oracle}\n  - engine: {model: oracle, backend: llamacpp}\n")
    code, _, err = run_cli(capsys, "eval", "judge", "--dataset", "jt@v1", "--judge", bad)
    assert code != 0 and f"{bad}: key 'judges.1.engine.backend'" in err and "Traceback" not in err
    bad.write_text("judges:\n  - engine: {modle: oracle}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: key 'judges.0.engine.modle': Extra inputs"):
        load_jury([str(bad)])


def test_jury_voter_engine_typo_names_the_pipeline_path(tmp_path):
    """In a pipeline, a juror's engine typo fails when the YAML loads, with the step's config path."""
    from prefdata.pipeline import load_spec

    y = tmp_path / "p.yaml"
    y.write_text("name: p\nsteps:\n  - name: clean\n    uses: clean_labels\n    input: x.jsonl\n    output: o\n"
                 "    config:\n      voters:\n        - type: jury\n          judges:\n"
                 "            - engine: {model: a}\n            - engine: {model: b, max_batch: 4}\n")
    with pytest.raises(ConfigError) as e:
        load_spec(y)
    msg = str(e.value)
    # (pydantic's loc carries the voter's type tag: steps.clean.config.voters.0.jury.judges.1.engine...)
    assert msg.startswith(f"{y}: unknown key 'steps.clean.config.voters.0.") and "judges.1.engine.max_batch'" in msg, msg
    y.write_text(y.read_text().replace("max_batch: 4", "max_batch_size: 4"))
    spec = load_spec(y)
    from prefdata.curation.step import CleanLabelsConfig

    cfg = CleanLabelsConfig.model_validate(spec.steps[0].config)
    # Typed, and dumped as only the keys given (the step's recorded config and fingerprint read as the YAML).
    assert cfg.voters[0].judges[1].engine.max_batch_size == 4
    assert cfg.model_dump()["voters"][0]["judges"][1]["engine"] == {"model": "b", "max_batch_size": 4}


def test_a_jury_is_a_clean_labels_voter(tmp_path):
    """`voters: [{type: jury, judges: [...]}]` in clean_labels: the jurors' votes reach the posterior,
    each juror on its own engine (the pipeline's engine_for), and the config is checked at load."""
    from prefdata.curation.step import CleanLabelsConfig, collect_votes

    cfg = CleanLabelsConfig(voters=[{"type": "jury", "judges": [{"engine": {"model": "oracle"}},
                                                                {"engine": {"model": "longer"}}]}])
    assert cfg.needs_engine
    asked = []
    votes = collect_votes(_table(), cfg, engine_for=lambda o: asked.append(o) or _engine_for(o), progress=False)
    assert asked == [{"model": "oracle"}, {"model": "longer"}]
    np.testing.assert_array_equal(votes["jury:0"], np.ones(N))
    np.testing.assert_array_equal(votes["jury:1"], [1, 1, 1, 1, 1, -1, -1, -1])
    with pytest.raises(Exception, match="judges"):
        CleanLabelsConfig(voters=[{"type": "jury", "judges": []}])


def test_clean_labels_card_shows_the_jurys_biases():
    """A jury voter's verdicts also give the card `eval judge`'s bias figures (position consistency,
    first-position rate, length bias), from the same verdicts, with no second judging pass."""
    from types import SimpleNamespace

    from prefdata.curation.step import CleanLabelsConfig, run_clean_labels
    from prefdata.evals.judge import format_report

    cfg = CleanLabelsConfig(voters=[{"type": "jury", "judges": [{"engine": {"model": "longer"}},
                                                                {"engine": {"model": "always-a"}, "name": "pos"}]}],
                            policy={"flip_max_prob": None})
    made = []
    ctx = SimpleNamespace(seed=0, step=SimpleNamespace(input="file.jsonl"),
                          engine=lambda o: made.append(o) or _engine_for(overrides_dict(o)))
    res = run_clean_labels(cfg, _table(), ctx)
    assert len(made) == 2  # each juror judged once: the card reuses the vote's verdicts
    sections = dict(res.card_sections)
    card = sections["Judges and their biases"]
    expected = _report("longer", "always-a")  # what `eval judge` reports for the same two jurors
    expected["judges"][1]["judge"] = "pos"
    assert card == format_report(expected)
    assert "| `longer` | 100.0% | 50.0% | 0.0% |" in card and "+37.5 pt |" in card  # length bias, no position bias
    assert "| `pos` | 0.0% | 100.0% | 100.0% |" in card  # pure position bias: never consistent, always A
    [bias] = res.lineage["jury_bias"]
    assert bias["judges"][0]["length"]["bias"] == 0.375 and bias["judges"][1]["first_position_rate"] == 1.0


def test_clean_labels_card_has_no_jury_section_without_a_jury(monkeypatch):
    from types import SimpleNamespace

    from prefdata.curation import step as cstep

    monkeypatch.setattr(cstep, "collect_votes", lambda table, cfg, **kw: {"rm:x": np.linspace(1, 2, N)})
    cfg = cstep.CleanLabelsConfig(voters=[{"type": "reward_model", "model": "x"}])
    res = cstep.run_clean_labels(cfg, _table(), SimpleNamespace(seed=0, step=SimpleNamespace(input="f.jsonl")))
    assert "Judges and their biases" not in dict(res.card_sections) and "jury_bias" not in res.lineage
