"""docs/CONTRIBUTING.md cannot rot: its generator walk-through is run as written.

The three code blocks under the headings naming `prefdata/generators/offtopic.py`,
`pipelines/offtopic.yaml` and `tests/test_offtopic.py` are written to a temporary tree. The module
is imported as `prefdata.generators.offtopic` (its `@step` registers it), and the doc's own tests
run: the generator on a scripted engine, and the YAML through `run_pipeline` to a store version.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "CONTRIBUTING.md"
FILES = ("prefdata/generators/offtopic.py", "pipelines/offtopic.yaml", "tests/test_offtopic.py")


def doc_files() -> dict[str, str]:
    """{path named in a heading: the first fenced code block after that heading}."""
    text = DOC.read_text(encoding="utf-8")
    out = {}
    for path in FILES:
        m = re.search(r"^###[^\n]*`" + re.escape(path) + r"`[^\n]*\n.*?^```\w*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
        assert m, f"docs/CONTRIBUTING.md has no code block under a heading naming {path}"
        out[path] = m.group(1)
    return out


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # set by the caller's monkeypatch too, so it is removed afterwards
    spec.loader.exec_module(mod)
    return mod


def test_the_generator_walk_through_runs_as_written(tmp_path, monkeypatch):
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
