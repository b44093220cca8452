"""docs/CONTRIBUTING.md cannot rot: its generator, voter and loss walk-throughs are run as written.

The three code blocks under the headings naming `prefdata/generators/offtopic.py`,
`pipelines/offtopic.yaml` and `tests/test_offtopic.py` are written to a temporary tree. The module
is imported as `prefdata.generators.offtopic` (its `@step` registers it), and the doc's own tests
run: the generator on a scripted engine, and the YAML through `run_pipeline` to a store version.

The loss's two blocks, under the headings naming `trainers/losses.py` and `tests/test_losses.py`,
run as if appended to those files: the loss registers itself, the doc's test passes, and (in a fresh
process, where `trainers.dpo` is first imported after the loss) the config and the trainer take it.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "CONTRIBUTING.md"
FILES = ("prefdata/generators/offtopic.py", "pipelines/offtopic.yaml", "tests/test_offtopic.py")
LOSS_FILES = ("trainers/losses.py", "tests/test_losses.py")
VOTER_FILES = ("prefdata/rewards/repetition.py", "tests/test_repetition.py")


def doc_block(path: str) -> str:
    """The first fenced code block after the heading naming `path`."""
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"^###[^\n]*`" + re.escape(path) + r"`[^\n]*\n.*?^```\w*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert m, f"docs/CONTRIBUTING.md has no code block under a heading naming {path}"
    return m.group(1)


def doc_files() -> dict[str, str]:
    """{path named in a heading: the first fenced code block after that heading}."""
    return {path: doc_block(path) for path in FILES}


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # set by the caller's monkeypatch too, so it is removed afterwards
    spec.loader.exec_module(mod)
    return mod


def test_the_generator_walk_through_runs_as_written(tmp_path, monkeypatch):
    import prefdata.catalog  # noqa: F401  (the built-in steps register in the real registry, not the copy below)
    import prefdata.generators
    from prefdata import steps

    root = tmp_path / "repo"
    for rel, code in doc_files().items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(code, encoding="utf-8")
    # The registry and the module table are restored after the test: the doc's step stays out of the
    # built-in catalog seen by every other test.
    monkeypatch.setattr(steps, "_REGISTRY", dict(steps._REGISTRY))
    monkeypatch.setitem(sys.modules, "prefdata.generators.offtopic", None)
    mod = _load("prefdata.generators.offtopic", root / FILES[0])
    monkeypatch.setattr(prefdata.generators, "offtopic", mod, raising=False)
    assert "offtopic" in steps.registered() and steps.registered()["offtopic"].config is mod.OffTopicConfig

    from prefdata.generators.common import SamplingConfig

    assert issubclass(mod.OffTopicConfig, SamplingConfig)  # the skeleton, not a copy of its fields

    monkeypatch.setitem(sys.modules, "test_offtopic_from_doc", None)
    tests = _load("test_offtopic_from_doc", root / FILES[2])
    ran = []
    for name, fn in inspect.getmembers(tests, inspect.isfunction):
        if name.startswith("test_") and fn.__module__ == tests.__name__:
            fixtures = {"monkeypatch": monkeypatch, "tmp_path": tmp_path / name}
            fn(**{p: fixtures[p] for p in inspect.signature(fn).parameters})
            ran.append(name)
    assert ran == ["test_pipeline_commits_the_pairs_with_a_card", "test_rejected_is_the_answer_to_another_prompt"]


def test_the_yaml_of_the_walk_through_is_checked_at_load(tmp_path, monkeypatch):
    """The doc says a bad `config:` key fails at load naming the file and key path: it does."""
    import prefdata.catalog  # noqa: F401  (as above)
    import prefdata.generators
    from prefdata import steps
    from prefdata.errors import ConfigError
    from prefdata.pipeline import load_spec

    files = doc_files()
    mod_path = tmp_path / "offtopic.py"
    mod_path.write_text(files[FILES[0]], encoding="utf-8")
    monkeypatch.setattr(steps, "_REGISTRY", dict(steps._REGISTRY))
    monkeypatch.setitem(sys.modules, "prefdata.generators.offtopic", None)
    monkeypatch.setattr(prefdata.generators, "offtopic", _load("prefdata.generators.offtopic", mod_path), raising=False)
    yml = tmp_path / "offtopic.yaml"
    yml.write_text(files[FILES[1]], encoding="utf-8")
    assert load_spec(yml).steps[0].uses == "offtopic"
    with pytest.raises(ConfigError, match=r"offtopic\.yaml.*steps\.offtopic\.config\.shift"):
        load_spec(yml, ["steps.offtopic.config.shift=0"])


def test_the_loss_walk_through_runs_as_written(monkeypatch):
    """The doc's loss, run in trainers.losses' namespace (as if appended there), registers with its
    record; the doc's test, run in tests/test_losses.py's namespace, passes."""
    import test_losses

    from trainers import losses

    code, test_code = (doc_block(p) for p in LOSS_FILES)
    # The registry and the module are restored after the test: the doc's loss stays out of what every
    # other test sees.
    monkeypatch.setattr(losses, "DPO_LOSSES", dict(losses.DPO_LOSSES))
    before, names = set(losses.DPO_LOSSES), set(vars(losses))
    try:
        exec(compile(code, f"{DOC}: {LOSS_FILES[0]}", "exec"), vars(losses))
        (name,) = set(losses.DPO_LOSSES) - before
        record = losses.spec(name)
        assert record.fn is getattr(losses, record.fn.__name__) and record.summary

        ns = dict(vars(test_losses))
        exec(compile(test_code, f"{DOC}: {LOSS_FILES[1]}", "exec"), ns)
        ran = []
        for test_name, fn in sorted(ns.items()):
            if test_name.startswith("test_") and test_name not in vars(test_losses) and callable(fn):
                fn()
                ran.append(test_name)
    finally:
        for added in set(vars(losses)) - names:
            delattr(losses, added)
    assert ran == [f"test_{name}_by_hand"]


def test_the_walk_through_loss_reaches_the_config_and_the_trainer(tmp_path):
    """In a fresh process the loss is registered before trainers.dpo is imported, as when it is in the
    file: `prefdata train fields dpo` lists it, DPOTrainConfig accepts it, and TRL takes its `trl` name."""
    script = f"""
import trainers.losses as L
exec(compile({doc_block(LOSS_FILES[0])!r}, "CONTRIBUTING.md", "exec"), vars(L))
from trl import DPOConfig
from trainers.common import config_help
from trainers.registry import config_class

cfg = config_class("dpo")(dataset="pairs.parquet", loss="apo_zero")
DPOConfig(output_dir={str(tmp_path)!r}, use_cpu=True, report_to=[], loss_type=L.spec(cfg.loss).trl)
print(config_help(config_class("dpo")))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=DOC.parents[1], capture_output=True, text=True,
                         timeout=600, check=False)
    assert out.returncode == 0, out.stderr
    loss_help = next(line for line in out.stdout.splitlines() if line.startswith("loss "))
    assert "| apo_zero (APO-zero eq. 7" in loss_help and loss_help.startswith("loss ('sigmoid'): sigmoid (DPO eq. 7)")


def test_the_voter_walk_through_runs_as_written(tmp_path, monkeypatch):
    """The doc's voter module registers itself (no edit elsewhere); its tests pass, one of them running
    `clean_labels` from YAML with `voters: [{type: repetition}]`. The registry is restored afterwards."""
    from prefdata.rewards import registry

    root = tmp_path / "repo"
    for rel in VOTER_FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(doc_block(rel), encoding="utf-8")
    monkeypatch.setattr(registry, "VOTERS", dict(registry.VOTERS))
    monkeypatch.setitem(sys.modules, "prefdata.rewards.repetition", None)
    mod = _load("prefdata.rewards.repetition", root / VOTER_FILES[0])
    assert registry.VOTERS["repetition"].spec is mod.RepetitionVoter

    monkeypatch.setitem(sys.modules, "test_repetition_from_doc", None)
    tests = _load("test_repetition_from_doc", root / VOTER_FILES[1])
    ran = []
    for name, fn in inspect.getmembers(tests, inspect.isfunction):
        if name.startswith("test_") and fn.__module__ == tests.__name__:
            where = tmp_path / name
            where.mkdir()
            fixtures = {"monkeypatch": monkeypatch, "tmp_path": where}
            fn(**{p: fixtures[p] for p in inspect.signature(fn).parameters})
            ran.append(name)
    assert ran == ["test_clean_labels_runs_it_from_yaml", "test_distinct_word_ratio_by_hand_and_sign_under_swap"]
