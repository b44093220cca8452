"""Training through the real CLI: a model is written whole or not at all (a run killed with -9 while it
saves, or one that fails, leaves the last good model as it was), each `prefdata train` without
`--output-dir` is a new model version listed with its dataset and hash, and `prefdata models rm` /
`gc` remove versions without renumbering the others or touching what datasets, eval reports,
pipelines and the latest pointer name. See docs/RELIABILITY.md, "Training"."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prefdata import artifacts, store
from prefdata.models import _size, resolve_model
from prefdata.schema import validate
from prefdata.store.core import sha256_file
from prefdata.testing import run_cli as cli  # the real CLI in-process: (code, stdout, stderr)


def pairs(name: str = "toy", n: int = 8):
    rows = [{"prompt": f"question {i}", "chosen": f"a good answer {i}", "rejected": f"bad {i}"} for i in range(n)]
    return store.commit(name, validate(rows, "pair"))


def train(capsys, dataset: str, model: str, *extra: str, steps: int = 1):
    return cli(capsys, "train", "dpo", "--dataset", dataset, "--model", model, "--set", f"max_steps={steps}", *extra)


def snapshot(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): sha256_file(f) for f in sorted(folder.rglob("*")) if f.is_file()}


def trained(capsys) -> list[dict]:
    code, out, err = cli(capsys, "models", "list", "--json")
    assert code == 0, err
    return json.loads(out)["trained"]


def killed_while_saving(args: list[str], base: Path, weights: str) -> None:
    """Run `prefdata ARGS` in a subprocess that pauses after writing its weights and before its card
    (PREFDATA_TEST_SAVE_PAUSE), and kill -9 it there, once `base.glob(weights)` finds the weights."""
    env = {**os.environ, "PREFDATA_TEST_SAVE_PAUSE": "60", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "prefdata.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None and not list(base.glob(weights)):
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert list(base.glob(weights)), "the run never reached its save"
        time.sleep(0.5)  # the weights file is complete; the run sleeps before its card
    finally:
        proc.kill()
        proc.wait()


# ----------------------------------------------------------------------------- atomic output


def test_a_rerun_killed_while_saving_into_the_same_folder_keeps_the_last_good_model(tiny_model, tmp_path, capsys):
    v = pairs()
    out = tmp_path / "out"
    code, stdout, err = train(capsys, v.ref, tiny_model, "--output-dir", out)
    assert code == 0, err
    assert f"model: {out}" in stdout
    first = snapshot(out)
    assert json.loads((out / "prefdata-train.json").read_text())["status"] == "succeeded"
    assert json.loads((out / "prefdata-train.json").read_text())["config"]["output_dir"] == str(out)

    killed_while_saving(["train", "dpo", "--dataset", v.ref, "--model", tiny_model, "--set", "max_steps=2",
                         "--output-dir", str(out)], tmp_path, ".out.tmp-*/model.safetensors")
    assert snapshot(out) == first  # the first run's weights under the first run's card, nothing else
    assert len(list(tmp_path.glob(".out.tmp-*"))) == 1  # the killed run's folder, beside it

    code, _, err = train(capsys, v.ref, tiny_model, "--output-dir", out, steps=2)
    assert code == 0, err
    assert not list(tmp_path.glob(".out.*"))  # the dead run's folder is swept, the swap left nothing
    info = json.loads((out / "prefdata-train.json").read_text())
    assert info["status"] == "succeeded" and info["config"]["max_steps"] == 2
    assert info["config"]["output_dir"] == str(out)  # the card names the final folder, not the temporary one
    assert snapshot(out)["model.safetensors"] != first["model.safetensors"]


@pytest.fixture(scope="module")
def nan_model(tiny_model, tmp_path_factory) -> str:
    """The tiny model with its final norm set to NaN: every loss is NaN, so training fails at step 1."""
    import torch
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("nan-llama")
    shutil.copytree(tiny_model, path, dirs_exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    model.save_pretrained(path)
    return str(path)


def test_a_failed_rerun_keeps_the_last_good_model(tiny_model, nan_model, tmp_path, capsys):
    v = pairs()
    out = tmp_path / "out"
    assert train(capsys, v.ref, tiny_model, "--output-dir", out)[0] == 0
    first = snapshot(out)
    code, _, err = train(capsys, v.ref, nan_model, "--output-dir", out)
    assert code == 1 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert "training failed: non-finite loss" in line and f"the earlier model in {out} is kept" in line
    assert str(tmp_path / "out.failed" / "README.md") in line
    assert snapshot(out) == first
    assert json.loads((tmp_path / "out.failed" / "prefdata-train.json").read_text())["status"] == "failed"

    # Without --output-dir: the failed run is kept as a card under failed-<run>, and is not a version.
    code, _, err = train(capsys, v.ref, nan_model)
    assert code == 1 and "training failed" in err
    (failed,) = (store.home() / "models" / "trained" / "dpo-toy").glob("failed-*")
    assert str(failed / "model" / "README.md") in err
    assert trained(capsys) == []


def test_a_folder_with_other_files_is_never_replaced(tiny_model, tmp_path, capsys):
    v = pairs()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    code, _, err = train(capsys, v.ref, tiny_model, "--output-dir", mine)
    assert code == 0 and "holds files prefdata did not write" in err, err
    assert (mine / "notes.txt").read_text() == "keep me" and (mine / "model.safetensors").is_file()


# ----------------------------------------------------------------------------- versions


def test_cli_runs_are_versions_listed_with_dataset_and_hash_and_reruns_add_one(tiny_model, capsys):
    v = pairs()
    code, out1, err = train(capsys, "toy@latest", tiny_model, "--set", "lora=true")  # a LoRA adapter
    assert code == 0, err
    code, out2, err = train(capsys, "toy@latest", tiny_model, "--set", "lora=true")
    assert code == 0, err
    assert out1.startswith("model: dpo-toy@v1  sha256 ") and out2.startswith("model: dpo-toy@v2  sha256 ")
    listed = trained(capsys)
    assert [t["ref"] for t in listed] == ["dpo-toy@v1", "dpo-toy@v2"]
    for t in listed:
        assert t["dataset"] == v.ref and t["dataset_sha256"] == v.sha and t["uses"] == "prefdata train dpo"
        assert t["content_sha256"] == artifacts.content_hash(Path(t["path"])) and t["bytes"] > 0
        assert f"path: {t['path']}" in (out1 if t["ref"].endswith("v1") else out2)
    assert listed[0]["path"] != listed[1]["path"]
    # An adapter version named as a model is merged into its base once, like an adapter folder.
    merged = Path(resolve_model("dpo-toy@v1"))
    assert merged == store.home() / "models" / "merged" / listed[0]["content_sha256"][:16]
    assert (merged / "config.json").is_file() and (Path(listed[0]["path"]) / "adapter_config.json").is_file()
    card = json.loads((Path(listed[0]["path"]) / "prefdata-train.json").read_text())
    assert card["config"]["output_dir"] == listed[0]["path"]  # the final folder, not the temporary one
    code, out, _ = cli(capsys, "models", "list")
    assert "dpo-toy@v2\tprefdata train dpo\ttoy@v1\t" + listed[1]["content_sha256"][:12] in out

    code, out, err = train(capsys, v.ref, tiny_model, "--name", "my-policy")
    assert code == 0 and out.startswith("model: my-policy@v1"), err
    code, _, err = train(capsys, v.ref, tiny_model, "--name", "x", "--output-dir", "elsewhere")
    assert code == 1 and "--name" in err and "--output-dir" in err

    # gc: v1 is named by nothing and is not the latest; my-policy@v1 and dpo-toy@v2 are latest.
    v1 = Path(listed[0]["path"]).parent
    code, out, err = cli(capsys, "models", "gc", "--dry-run")
    assert code == 0, err
    first = out.splitlines()[0]
    assert first.startswith("would remove dpo-toy@v1\t") and first.endswith(f"\t{v1}")
    assert out.splitlines()[1] == f"would remove {merged}\t{_size(artifacts.folder_bytes(merged))}\t" \
                                  "(merged copy of dpo-toy@v1)"
    freed = artifacts.folder_bytes(v1) + artifacts.folder_bytes(merged)
    assert f" {freed} bytes" in out and "nothing removed" in out and v1.is_dir() and merged.is_dir()
    code, out, err = cli(capsys, "models", "gc")
    assert code == 0 and not v1.exists() and not merged.exists(), err
    assert [t["ref"] for t in trained(capsys)] == ["dpo-toy@v2", "my-policy@v1"]
    assert artifacts.model_version(store.home(), "dpo-toy@v2").ref == listed[1]["path"]  # not renumbered
    code, out, _ = train(capsys, "toy", tiny_model)
    assert out.startswith("model: dpo-toy@v3")  # v1 is never handed out again


def test_a_run_killed_while_saving_is_never_a_version_and_is_swept(tiny_model, capsys):
    pairs()
    assert train(capsys, "toy@v1", tiny_model)[0] == 0
    name_dir = store.home() / "models" / "trained" / "dpo-toy"
    killed_while_saving(["train", "dpo", "--dataset", "toy@v1", "--model", tiny_model, "--set", "max_steps=1"],
                        name_dir, ".tmp-*/.model.tmp-*/model.safetensors")
    assert [t["ref"] for t in trained(capsys)] == ["dpo-toy@v1"]
    (dead,) = name_dir.glob(".tmp-*")
    code, out, err = cli(capsys, "models", "gc", "--dry-run", "--json")
    report = json.loads(out)
    assert report["leftovers"] == [{"path": str(dead), "bytes": artifacts.folder_bytes(dead),
                                    "why": "left by a killed run"}] and dead.is_dir()
    assert report["removed"] == [] and report["bytes_freed"] == artifacts.folder_bytes(dead)
    code, out, err = train(capsys, "toy@v1", tiny_model)  # the next run of the name sweeps it
    assert code == 0 and out.startswith("model: dpo-toy@v2") and not dead.exists(), err


# ----------------------------------------------------------------------------- rm and gc


def _version(name: str, tag: str, created: float, **lineage) -> artifacts.Artifact:
    where = artifacts.folder(store.home(), "model", name, f"fp-{tag}")
    artifacts.fresh(where)
    (where / "model").mkdir()
    (where / "model" / "config.json").write_text("{}")
    (where / "model" / "model.safetensors").write_bytes(tag.encode() * 1000)
    manifest = {"kind": "model", "name": name, "created": created, "lineage": {"parents": ["data@v1"], **lineage}}
    return artifacts.stamp(where, "model", manifest, "# card\n")


def test_gc_keeps_what_datasets_evals_pipelines_models_and_latest_name(tmp_path, capsys):
    t = time.time() - 100
    a = [_version("pol", str(i), t + i) for i in range(1, 8)]  # pol@v1 .. pol@v7
    # v1: a dataset generated with it (by path inside the folder); v2: an eval report; v3: a pipeline file
    # (by ref); v4: the base of v5, which a dataset names by ref; v6: nothing; v7: the latest.
    store.commit("gen", validate([{"prompt": "q", "chosen": "a", "rejected": "b"}], "pair"),
                 lineage={"engine": {"model": a[0].ref}, "parents": ["builtin:x"]})
    ev = store.home() / "evals" / "rm-eval" / "fp-e"
    ev.mkdir(parents=True)
    (ev / "step.json").write_text(json.dumps({"lineage": {"step": {"config": {"model": a[1].ref}}}}))
    pipe = tmp_path / "p.yaml"
    pipe.write_text("steps:\n  - {name: answer, uses: rlcd, engine: {model: pol@v3}}\n")
    shutil.rmtree(a[4].path)
    a[4] = _version("pol", "5", t + 5, base_model=str(a[3].path / "model"))
    store.commit("gen2", validate([{"prompt": "q", "chosen": "a", "rejected": "b"}], "pair"),
                 lineage={"policy": "pol@v5", "parents": ["gen@v1"]})
    six = a[5].path
    dead = store.home() / "models" / "pipelines" / "pol" / "fp-1" / ".model.tmp-999999999-abc"
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"x" * 5000)

    code, out, err = cli(capsys, "models", "gc", "--dry-run", "--pipeline", pipe)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("would remove pol@v6\t") and lines[0].endswith(str(six))
    assert lines[1] == f"would remove {dead}\t4.9 KiB\t(left by a killed run)"
    freed = artifacts.folder_bytes(six) + 5000
    assert lines[-1] == f"dry run: 1 model version(s) and 1 leftover folder(s), {freed} bytes " \
                        f"({freed / 1024:.1f} KiB) would be freed; nothing removed"
    for why in ("pol@v1\tnamed by dataset gen@v1", "pol@v2\tnamed by eval report rm-eval",
                f"pol@v3\tnamed by pipeline {pipe}", "pol@v4\tnamed by model pol@v5",
                "pol@v5\tnamed by dataset gen2@v1", "pol@v7\tlatest"):
        assert f"kept {why}" in err, (why, err)
    assert six.is_dir() and dead.is_dir()

    code, out, err = cli(capsys, "models", "gc", "--pipeline", pipe, "--json")
    report = json.loads(out)
    assert [r["ref"] for r in report["removed"]] == ["pol@v6"] and report["bytes_freed"] == freed
    assert not six.exists() and not dead.exists()
    refs = [t["ref"] for t in trained(capsys)]
    assert refs == ["pol@v1", "pol@v2", "pol@v3", "pol@v4", "pol@v5", "pol@v7"]  # none renumbered
    assert resolve_model("pol@v7") == a[6].ref

    # Without the pipeline file, v3 is garbage; rm refuses a version something names, unless forced.
    code, _, err = cli(capsys, "models", "rm", "pol@v1")
    assert code == 1 and "pol@v1 is named by dataset gen@v1" in err and "--force" in err
    assert a[0].path.is_dir()
    code, out, err = cli(capsys, "models", "rm", "pol@v1", "--force")
    assert code == 0 and out.startswith("removed pol@v1") and "bytes" in out and not a[0].path.exists()
    code, out, err = cli(capsys, "models", "rm", "pol@latest")
    assert code == 0 and out.startswith("removed pol@v7"), err
    assert resolve_model("pol@latest") == a[4].ref
    new = _version("pol", "8", time.time())
    assert artifacts.version_of(store.home(), new.path).version == 8  # v7 is never handed out again
    code, _, err = cli(capsys, "models", "rm", "pol@v7")
    assert code == 1 and "has versions v2..v5, v8, not v7" in err
    code, _, err = cli(capsys, "models", "rm", "pol")
    assert code == 1 and "not a model ref" in err
