"""Streaming steps: a row-wise step runs shard by shard into a VersionWriter; the version (rows,
files, content hash) does not depend on the shard size; whole-input steps still see everything; a
kill -9 mid-run resumes from the cache without duplicates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from prefdata import store
from prefdata.engines.cache import RequestCache
from prefdata.engines.faultserver import FaultServer
from prefdata.testing import run_cli as cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _rows(n: int, start: int = 0) -> pa.Table:
    return pa.Table.from_pylist([{"id": f"r{i}", "prompt": [{"role": "user", "content": f"q {i} " * (i % 5 + 1)}],
                                  "chosen_score": float(i), "note": None if i < 7 else f"n{i}"}
                                 for i in range(start, start + n)])


def test_a_split_written_in_shards_equals_the_split_committed_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(store.core, "ROW_GROUP_ROWS", 4)  # several row groups and files from a few rows
    monkeypatch.setattr(store.core, "FILE_ROWS", 8)
    whole = _rows(21)
    a = store.commit("whole", whole)
    with store.VersionWriter("sharded") as w:
        # Shards of 3: the first two have an all-null `note` column (type null), the rest strings.
        for k in range(0, 21, 3):
            w.write("train", whole.slice(k, 3))
        b = w.commit()
    assert a.sha == b.sha and a.manifest["splits"] == b.manifest["splits"]
    assert a.manifest["splits"]["train"]["files"] == [f"data/train-0000{k}-of-00003.parquet" for k in range(3)]
    assert [pq.ParquetFile(f).metadata.num_row_groups for f in b.data_files()] == [2, 2, 2]
    assert store.load_table(b.ref).equals(store.load_table(a.ref).cast(store.load_table(b.ref).schema))
    assert store.load_table(b.ref).column("note").to_pylist() == whole.column("note").to_pylist()
    assert b.manifest["duplicates"] == {"train": {"ids": 0, "rows": 0}}
    assert "| train | 21 |" in b.card_path.read_text()
    assert not list((store.datasets_dir() / "sharded").glob(".tmp-*"))  # the spool went with the commit


def test_a_writer_left_without_commit_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), store.VersionWriter("gone") as w:
        w.write("train", _rows(5))
        raise RuntimeError("killed mid-step")
    assert store.list_versions("gone") == [] and not list((store.datasets_dir() / "gone").glob(".tmp-*"))


def test_a_bad_number_in_a_later_shard_names_its_row_in_the_split(tmp_path):
    bad = _rows(4, start=10).to_pylist()
    bad[2]["chosen_score"] = float("nan")
    with store.VersionWriter("nan") as w:
        w.write("train", _rows(10))
        with pytest.raises(store.core.PrefdataError, match=r"row 13\b.*chosen_score|chosen_score.*row 13\b"):
            w.write("train", pa.Table.from_pylist(bad))


def test_duplicates_are_counted_and_dropped_across_shards():
    from prefdata.store.checks import Deduper, DuplicateCounter

    t = pa.Table.from_pylist([{"id": f"i{i % 4}", "prompt": f"p{i % 3}"} for i in range(12)])
    whole, dropped = store.dedup(t)
    d, c, kept = Deduper(), DuplicateCounter(), []
    for k in range(0, 12, 5):
        part, _ = d.filter(t.slice(k, 5))
        kept.append(part)
        c.add(t.slice(k, 5))
    assert pa.concat_tables(kept).equals(whole) and dropped == 9  # i0/p0, i1/p1, i2/p2 survive
    assert c.counts() == store.duplicate_counts(t) == {"ids": 8, "rows": 9}


def _pipeline(tmp_path, url, n, *, shard_rows=None, output="pairs", name="p.yaml", concurrency=8):
    prompts = tmp_path / "prompts.jsonl"
    if not prompts.exists():
        prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": [{"role": "user", "content":
                                               f"Tell me about topic number {i}."}]}) + "\n" for i in range(n)))
    eng = {"backend": "openai", "model": "test-model", "base_url": url, "max_retries": 2, "timeout_s": 5.0,
           "progress": False, "concurrency": concurrency}
    spec = {"name": "s", "engine": eng, "steps": [{"name": "rlcd", "uses": "rlcd", "input": str(prompts),
                                                     "output": output, "config": {"max_tokens": 16}}]}
    if shard_rows:
        spec["shard_rows"] = shard_rows
    p = tmp_path / name
    p.write_text(yaml.safe_dump(spec))
    return p


def test_shard_size_changes_neither_rows_nor_content_hash(tmp_path, capsys):
    with FaultServer() as s:
        code, _, err = cli(capsys, "run", _pipeline(tmp_path, s.url, 11, shard_rows=3, output="small", name="a.yaml"))
        assert code == 0, err
        assert "in 4 shards of 3" in " ".join(err.split())
        code, _, err = cli(capsys, "run", _pipeline(tmp_path, s.url, 11, shard_rows=1000, output="big", name="b.yaml"))
        assert code == 0, err
    small, big = store.resolve("small"), store.resolve("big")
    assert small.sha == big.sha
    assert store.load_table(small.ref).to_pylist() == store.load_table(big.ref).to_pylist()
    assert small.manifest["splits"]["train"]["rows"] == 11
    rep = small.manifest["lineage"]["report"]
    assert rep["shards"] == 4 and rep["pairs"] == 11 and rep["input_examples"] == 11  # summed over shards
    card = small.card_path.read_text()
    assert "## Streaming" in card and "(first shard)" in card and "| train | 11 |" in card
    assert "## Streaming" not in big.card_path.read_text()


def test_streaming_steps_get_shards_and_whole_input_steps_the_whole_table(tmp_path, capsys):
    from pydantic import BaseModel

    from prefdata.generators.common import pair_table
    from prefdata.pipeline import StepResult, register_step, step_types

    seen = {"rowwise": [], "whole": []}

    class Cfg(BaseModel):
        needs_engine: bool = False

    def make(kind):
        def fn(cfg, table, ctx):
            seen[kind].append(len(table))
            return StepResult(tables={"train": pair_table([
                {"prompt": [{"role": "user", "content": f"{kind} {r['id']}"}], "chosen": [{"role": "assistant",
                 "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}], "source": "t"}
                for r in table.select(["id"]).to_pylist()])}, report={"made": len(table)})
        return fn

    register_step("_test_rowwise", Cfg, make("rowwise"), input="pair", streaming=True)
    register_step("_test_whole", Cfg, make("whole"), input="pair")
    assert step_types()["rlcd"].streaming and not step_types()["clean_labels"].streaming
    assert not step_types()["_test_whole"].streaming
    p = tmp_path / "w.yaml"
    p.write_text(yaml.safe_dump({"shard_rows": 4, "steps": [
        {"name": "a", "uses": "_test_rowwise", "input": "builtin:quickstart_prompts", "output": "rw", "limit": 10},
        {"name": "b", "uses": "_test_whole", "input": "step:a", "output": "wh", "shard_rows": 2}]}))
    code, _, err = cli(capsys, "run", p)
    assert code == 0, err
    assert seen == {"rowwise": [4, 4, 2], "whole": [10]}
    assert store.resolve("rw").manifest["lineage"]["report"]["made"] == 10


def test_kill_9_mid_run_resumes_without_duplicates_or_lost_rows(tmp_path, capsys):
    n = 40
    env = {**os.environ, "PREFDATA_PROGRESS_EVERY": "1000"}
    with FaultServer(latency=0.03) as s:
        p = _pipeline(tmp_path, s.url, n, shard_rows=10, output="killed", concurrency=4)
        proc = subprocess.Popen([sys.executable, "-m", "prefdata.cli", "run", str(p)], env=env, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while s.counts.get("ok", 0) < n and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)  # about half of the 2n requests (two continuations a prompt) are answered
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = sum(s.counts.values())
        cached = len(RequestCache(store.home() / "cache" / "requests.sqlite"))
        assert 0 < cached < 2 * n and store.list_versions("killed") == []
        code, _, err = cli(capsys, "run", p)
        assert code == 0, err
        resent = sum(s.counts.values()) - before
    rows = store.load_table("killed").to_pylist()
    assert len(rows) == n and len({r["id"] for r in rows}) == n
    # Exactly what the cache lacked is asked again (at most the last half second of answers was lost).
    assert resent == 2 * n - cached, (resent, cached, before)
    assert not list((store.datasets_dir() / "killed").glob(".tmp-*"))  # the dead run's spool was swept
