"""README.md cannot rot: its flow is run as written, and its tables name every registered component.

The first ```bash block under "## The flow" is read command by command and run through the real CLI,
in this test's own PREFDATA_HOME, on the tiny random model wherever the README names the embedded
one (as tests/test_flywheel.py does: `engine.model`, the heads backbone, `--model`). `prefdata review`
is started as a process, given two decisions over HTTP as a browser would, and stopped with Ctrl-C.
What the README shows each command printing (refs, the review lines, the clean card's verdict line)
must be printed here too; figures that depend on the model (rows, AUC, win rate) are not compared.

The Generators, Voters and Trainers tables must name every generator step, voter type and trainer
kind registered in code, so a component added without a README row fails here.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from prefdata.testing import run_cli

README = Path(__file__).resolve().parents[1] / "README.md"
REPO = README.parent
EMBEDDED = "HuggingFaceTB/SmolLM2-135M-Instruct"

# What the README's output block shows for the flow, and every run of it prints (model-independent).
SHOWN = [
    "rlcd: rlcd-helpful@v1  card:",
    "→ rlcd-helpful@v1",
    "clean: helpful-clean@v1  card:",
    "reviewing helpful-clean@v1 as me:",
    "open: http://127.0.0.1:",
    "review server stopped; every decision so far is saved",
    "helpful-clean@v2: 2 pairs reviewed",
    "model: dpo-helpful-clean@v1  sha256",
    "in both orders on 8 prompts (a win needs both orders)",
]
VERDICT = re.compile(r"^Labels (cleaned by \d+ voter families that can judge them|NOT judged: )")


def section(heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^## " + re.escape(heading) + r"\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert m, f"README.md has no '## {heading}' section"
    return m.group(1)


def flow_commands() -> list[list[str]]:
    """The `prefdata ...` commands of the first bash block under "## The flow", as argv lists."""
    m = re.search(r"^```bash\n(.*?)^```", section("The flow"), re.MULTILINE | re.DOTALL)
    assert m, "README.md's flow has no ```bash block"
    joined = re.sub(r"\\\n\s*", " ", m.group(1))
    cmds = [shlex.split(line, comments=True) for line in joined.splitlines()]
    return [c for c in cmds if c]


def flow_output() -> str:
    """The output block that follows the flow's commands."""
    blocks = re.findall(r"^```text\n(.*?)^```", section("The flow"), re.MULTILINE | re.DOTALL)
    assert blocks, "README.md's flow shows no output (a ```text block)"
    return "\n".join(blocks)


def table_names(heading: str) -> set[str]:
    """Backquoted names in the first cell of each table row of a section."""
    names = set()
    for line in section(heading).splitlines():
        cells = line.split("|")
        if line.startswith("|") and len(cells) > 2:
            names |= set(re.findall(r"`([^`]+)`", cells[1]))
    return names


def on_tiny(argv: list[str], tiny: str) -> list[str]:
    """The README's command with the tiny model standing in for the embedded one."""
    args = [tiny if a == EMBEDDED else a for a in argv[1:]]
    if args[0] == "run":
        args += ["--set", f"engine.model={tiny}"]
        if "clean_labels" in args[1]:
            args += ["--set", f"steps.clean.config.voters=[{{type: heads, backbone: {tiny}, k: 2, folds: 2}}]"]
    elif args[0] == "train":
        args += ["--model", tiny]
    return args


def review_in_a_browser(args: list[str]) -> str:
    """`prefdata review REF ...` as a process: two decisions over HTTP, then Ctrl-C. Its stdout + stderr."""
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "prefdata.cli", *args, "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ, cwd=REPO)
    lines = []
    try:
        while not (lines and lines[-1].startswith("open: ")):
            line = proc.stdout.readline()
            assert line or proc.poll() is None, f"review exited: {proc.stderr.read()}"
            lines.append(line)
        url = lines[-1].split("open: ", 1)[1].strip()
        with httpx.Client(base_url=url.split("/?")[0], follow_redirects=True) as c:
            page = c.get("/?" + url.split("/?")[1]).text
            csrf = re.search(r'name="csrf" content="([^"]+)"', page).group(1)
            for key in ("1", "2"):
                pid = re.search(r'data-id="([^"]+)"', c.get("/").text).group(1)
                r = c.post("/decide", json={"pair_id": pid, "key": key}, headers={"X-CSRF-Token": csrf})
                assert r.status_code == 200, r.text
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return "".join(lines) + out + err


def test_the_flow_runs_as_written_and_prints_what_the_readme_shows(tiny_model, capsys, monkeypatch):
    from prefdata import store

    monkeypatch.chdir(REPO)  # the README's paths are relative to the repository
    cmds = flow_commands()
    assert [c[0] for c in cmds] == ["prefdata"] * len(cmds)
    verbs = [" ".join(c[1:3]) for c in cmds]
    assert any(v.startswith("run ") for v in verbs) and "review commit" in verbs
    assert any(v.startswith("train ") for v in verbs) and any(v.startswith("eval ") for v in verbs)
    shown = flow_output()
    printed = []
    for argv in cmds:
        args = on_tiny(argv, tiny_model)
        if args[0] == "review" and args[1] not in ("commit", "export", "import"):
            printed.append(review_in_a_browser(args))
            continue
        code, out, err = run_cli(capsys, *args)
        assert code == 0, f"{shlex.join(argv)} failed:\n{err[-3000:]}"
        printed.append(out + err)
    everything = "\n".join(printed)
    for phrase in SHOWN:
        assert phrase in shown, f"README's flow output no longer shows {phrase!r}"
        assert phrase in everything, f"the flow did not print {phrase!r}"

    # The clean card opens with its verdict; the README quotes one.
    card = store.resolve("helpful-clean@v1").card_path.read_text(encoding="utf-8")
    first = card.split("# helpful-clean@v1\n", 1)[1].strip().splitlines()[0]
    assert VERDICT.match(first), first
    quoted = [line.lstrip("> ") for line in section("The flow").splitlines() if line.startswith("> ")]
    assert any(VERDICT.match(q) for q in quoted), "README's flow quotes no clean-card verdict line"


def test_every_registered_generator_voter_and_trainer_has_a_readme_row():
    from prefdata import catalog
    from prefdata.rewards.voters import VOTERS
    from trainers.registry import TRAINERS

    # Only what the packages ship: other tests in the same process register throwaway steps and voters.
    shipped = ("prefdata.", "trainers.")
    steps = {n: s for n, s in catalog.step_types().items() if s.run.__module__.startswith(shipped)}
    voters = {n for n, r in VOTERS.items() if r.spec.__module__.startswith(shipped)}
    generators = {n for n, s in steps.items() if s.run.__module__.startswith("prefdata.generators.")}
    assert {"rlcd", "self_reward"} <= generators
    missing = generators - table_names("Generators")
    assert not missing, f"generator steps with no row in README.md's Generators table: {sorted(missing)}"
    missing = voters - table_names("Voters")
    assert not missing, f"voter types with no row in README.md's Voters table: {sorted(missing)}"
    missing = set(TRAINERS) - table_names("Trainers")
    assert not missing, f"trainer kinds with no row in README.md's Trainers table: {sorted(missing)}"
    # Every other step type is named in the Generators section too (train_<kind> by its trainer row).
    text = section("Generators")
    others = [n for n in steps if n not in generators and not n.startswith("train_")]
    missing = [n for n in others if f"`{n}`" not in text]
    assert not missing, f"step types not named in README.md's Generators section: {missing}"
    for n in steps:
        if n.startswith("train_"):
            assert n.removeprefix("train_") in TRAINERS
    # No row names a component that does not exist.
    assert table_names("Voters") <= voters and table_names("Trainers") <= set(TRAINERS)
    assert table_names("Generators") <= set(steps)


def test_the_docs_the_readme_links_exist():
    for link in re.findall(r"\]\(((?:docs|benchmarks)/[^)#]+)", README.read_text(encoding="utf-8")):
        assert (REPO / link).exists(), f"README.md links to {link}, which does not exist"


@pytest.mark.parametrize("line", [0, 1])
def test_the_two_commands_come_first(line):
    block = re.search(r"^```bash\n(.*?)^```", README.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL).group(1)
    assert block.splitlines()[line].split("#")[0].strip() == ["make quickstart", "make test"][line]
