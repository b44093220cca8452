"""Reliability of `prefdata run` and the CLI, driven in-process through `prefdata.cli.main`.

Honest failure (outages fail the run, partial failures are bounded, recorded and retried), interrupts
(130/143, nothing half-committed), secrets (never written or printed), caches (concurrent opens,
corruption, full disk) and bad YAML, overrides and environments: every one ends in exit 1 (or
130/143) and one line, never a traceback.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import sqlite3
import time
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from prefdata.engines.faultserver import FaultServer
from prefdata.testing import run_cli as cli  # the real CLI in-process: (code, stdout, stderr)

KEY = "sk-proj-REDACTME0123456789abcdef"


# ----------------------------------------------------------------------------- helpers




def failed_cleanly(code, err, *needles, exit=1, only_line=False) -> str:
    """Exit `exit`, no traceback, exactly one `error:` line (the last; the only one if `only_line`)."""
    assert code == exit, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    if only_line:
        assert len(lines) == 1, err
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


def home() -> Path:
    return Path(os.environ["PREFDATA_HOME"])


def manifests() -> list[Path]:
    d = home() / "datasets"
    return sorted(d.rglob("manifest.json")) if d.exists() else []


def everything_written() -> bytes:
    return b"".join(f.read_bytes() for f in home().rglob("*") if f.is_file())


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def openai_pipeline(tmp_path, url, *, limit=3, output="api-pairs", step=None, engine=None, config=None) -> Path:
    p = tmp_path / "p.yaml"
    eng = {"backend": "openai", "model": "test-model", "base_url": url, "max_retries": 1, "timeout_s": 2.0,
           "progress": False, "api_key_env": "PREFDATA_TEST_KEY", **(engine or {})}
    st = {"name": "rlcd", "uses": "rlcd", "input": "builtin:quickstart_prompts", "output": output, "limit": limit,
          "config": {"max_tokens": 16, "max_retries": 1, **(config or {})}, **(step or {})}
    p.write_text(yaml.safe_dump({"name": "api", "engine": eng, "steps": [st]}))
    return p


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PREFDATA_TEST_KEY", KEY)


# ----------------------------------------------------------------------------- honest failure


def test_an_outage_fails_the_run_and_commits_nothing(tmp_path, capsys):
    code, _, err = cli(capsys, "run", openai_pipeline(tmp_path, closed_port_url()))
    failed_cleanly(code, err, "step 'rlcd'", "all 6 engine requests failed", "Connection")
    assert manifests() == []


def test_zero_rows_fail_the_run_with_the_drop_reason(tmp_path, capsys, monkeypatch):
    from prefdata.engines import faultserver

    monkeypatch.setattr(faultserver, "answer", lambda messages, seed: "")  # every output empty
    with FaultServer() as s:
        code, _, err = cli(capsys, "run", openai_pipeline(tmp_path, s.url, limit=2))
    failed_cleanly(code, err, "step 'rlcd' produced 0 rows from 2 input rows", "empty")
    assert manifests() == []


def test_partial_failure_is_bounded_recorded_and_retried(tmp_path, capsys):
    from prefdata import store

    with FaultServer(fault_rate=0.3, faults=("500",), seed=3) as s:
        p = openai_pipeline(tmp_path, s.url, limit=6, engine={"max_retries": 0})
        # Default max_failure_rate 0: any failed request fails the run, nothing committed.
        code, _, err = cli(capsys, "run", p)
        failed_cleanly(code, err, "step 'rlcd'", "engine requests failed", "max_failure_rate 0")
        assert manifests() == []

        code, _, err = cli(capsys, "run", p, "--set", "steps.rlcd.max_failure_rate=0.9")
        assert code == 0, err
        v1 = store.resolve("api-pairs")
        failures = v1.manifest["lineage"]["failures"]
        assert failures["failed"] > 0 and failures["requests"] == 12 and failures["max_failure_rate"] == 0.9
        assert "500" in failures["first_errors"][0]
        assert "## Failed requests" in Path(v1.card_path).read_text()

        # The server recovers: the rerun is not skipped, asks only for what failed, commits v2.
        s.fault_rate = 0.0
        asked = sum(s.counts.values())
        code, _, err = cli(capsys, "run", p, "--set", "steps.rlcd.max_failure_rate=0.9")
        assert code == 0, err
        v2 = store.resolve("api-pairs")
        assert v2.version == "v2" and v2.manifest["lineage"]["failures"]["failed"] == 0
        assert sum(s.counts.values()) - asked == failures["failed"]
        assert store.load_table(v2.ref).num_rows == 6 > store.load_table(v1.ref).num_rows

        # Nothing failed any more: the next rerun is skipped by its fingerprint, with no request.
        asked = sum(s.counts.values())
        code, _, err = cli(capsys, "run", p, "--set", "steps.rlcd.max_failure_rate=0.9")
        assert code == 0 and "skipped" in err and sum(s.counts.values()) == asked


# ----------------------------------------------------------------------------- interrupts

def _interrupting_step(sig, when="step"):
    """Register a step type that sends itself `sig` while running (or during its commit)."""
    from pydantic import BaseModel, ConfigDict

    from prefdata.generators.common import pair_table
    from prefdata.pipeline import StepResult, register_step

    class Cfg(BaseModel):
        model_config = ConfigDict(extra="forbid")
        needs_engine: bool = False

    def fn(cfg, table, ctx):
        if when == "step":
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the signal lands here
        rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": "a"}],
                 "rejected": [{"role": "assistant", "content": "b"}], "source": "t"} for i in range(3)]
        return StepResult(tables={"train": pair_table(rows)})

    name = f"_test_{sig}_{when}"
    register_step(name, Cfg, fn)
    return name


def _plain_pipeline(tmp_path, uses) -> Path:
    p = tmp_path / "sig.yaml"
    p.write_text(yaml.safe_dump({"steps": [{"name": "s", "uses": uses, "input": "builtin:quickstart_prompts",
                                            "output": "sig", "limit": 2}]}))
    return p


@pytest.fixture
def survive_sigterm():
    # Without the CLI's handler (today's code) SIGTERM would kill pytest itself: turn it into an error.
    def boom(signum, frame):
        raise RuntimeError("SIGTERM reached the default path")

    old = signal.signal(signal.SIGTERM, boom)
    yield
    signal.signal(signal.SIGTERM, old)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_exits_with_its_code_and_one_line(tmp_path, capsys, survive_sigterm, sig, code):
    got, _, err = cli(capsys, "run", _plain_pipeline(tmp_path, _interrupting_step(sig)))
    assert got == code, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1] == "interrupted, rerun to resume from the cache", err
    assert manifests() == []


def test_a_signal_during_a_commit_waits_for_it(tmp_path, capsys, monkeypatch, survive_sigterm):
    from prefdata import store

    real = store.VersionWriter.commit  # the pipeline streams its steps' shards into a VersionWriter

    def commit(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        return real(*a, **k)

    monkeypatch.setattr(store.VersionWriter, "commit", commit)
    got, _, err = cli(capsys, "run", _plain_pipeline(tmp_path, _interrupting_step(signal.SIGTERM, "commit")))
    assert got == 143 and "Traceback" not in err, err
    assert len(manifests()) == 1  # written whole
    assert store.load_table("sig@v1").num_rows == 3


def test_end_of_input_is_one_line_not_an_abort_traceback(tmp_path, capsys):
    from pydantic import BaseModel

    from prefdata.pipeline import register_step

    class Cfg(BaseModel):
        needs_engine: bool = False

    def fn(cfg, table, ctx):
        raise EOFError("Compressed file ended before the end-of-stream marker was reached")

    register_step("_test_eof", Cfg, fn)
    code, _, err = cli(capsys, "run", _plain_pipeline(tmp_path, "_test_eof"))
    failed_cleanly(code, err, "end of input", "end-of-stream marker")


# ----------------------------------------------------------------------------- secrets


def test_url_credentials_never_reach_the_store_or_the_terminal(tmp_path, capsys, monkeypatch):
    from prefdata import store

    descriptions = []
    import prefdata.progress

    real_bar = prefdata.progress.progress_bar  # every progress display (rich or plain) gets its label here
    monkeypatch.setattr(prefdata.progress, "progress_bar",
                        lambda label, *a, **k: descriptions.append(label) or real_bar(label, *a, **k))
    with FaultServer() as s:
        url = s.url.replace("http://", "http://alice:hunter2secret@")
        p = openai_pipeline(tmp_path, "http://127.0.0.1:1/v1", engine={"progress": True})
        code, out, err = cli(capsys, "run", p, "--set", f"engine.base_url={url}")
        assert code == 0, err
        # A wrong model: the engine's error names the server, and the run fails with it.
        code2, out2, err2 = cli(capsys, "run", p, "--set", f"engine.base_url={url}", "--set", "engine.model=nope",
                                "--set", "steps.rlcd.output=other")
    failed_cleanly(code2, err2, "not found on http://***@127.0.0.1")
    v = store.resolve("api-pairs")
    assert v.manifest["lineage"]["engine_config"]["base_url"].startswith("http://***@127.0.0.1")
    assert "***" in v.manifest["command"] and descriptions and all("***@" in d for d in descriptions)
    for blob in (everything_written(), (out + err + out2 + err2).encode(), " ".join(descriptions).encode()):
        assert b"hunter2secret" not in blob and KEY.encode() not in blob


def test_library_logs_are_redacted(tmp_path, capsys):
    import io
    import logging

    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    root = logging.getLogger()
    http_logs = [logging.getLogger(n) for n in ("httpx", "httpx2")]  # the HTTP library logs each URL at INFO
    levels = [lg.level for lg in http_logs]
    root.addHandler(handler)
    for lg in http_logs:
        lg.setLevel(logging.INFO)
    try:
        with FaultServer() as s:
            url = s.url.replace("http://", "http://alice:hunter2secret@")
            code, _, err = cli(capsys, "run", openai_pipeline(tmp_path, url, limit=1))
    finally:
        root.removeHandler(handler)
        for lg, level in zip(http_logs, levels):
            lg.setLevel(level)
    assert code == 0, err
    assert "http://***@127.0.0.1" in sink.getvalue() and "hunter2secret" not in sink.getvalue()


@pytest.mark.parametrize("value, needle", [(KEY, "looks like an API key"),
                                           ("hf_AbCdEfGhIjKlMnOpQrStUv", "looks like an API key"),
                                           ("MY-KEY", "must name an environment variable")])
def test_api_key_env_must_name_a_variable(tmp_path, capsys, value, needle):
    with FaultServer() as s:
        code, out, err = cli(capsys, "run", openai_pipeline(tmp_path, s.url), "--set", f"engine.api_key_env={value}")
    failed_cleanly(code, err, "api_key_env", needle, only_line=True)
    assert value not in out + err
    assert manifests() == [] and value.encode() not in everything_written()


def test_redact_masks_userinfo_query_tokens_and_keys_but_not_ids():
    from prefdata.redact import redact, redact_obj

    assert redact("http://u:p@h:1/v1") == "http://***@h:1/v1"
    assert redact("https://h/x?api_key=abc&n=2&sig=zz&access_token=t") == \
        "https://h/x?api_key=***&n=2&sig=***&access_token=***"
    assert redact(f"key {KEY} and Bearer abcdef123456") == "key *** and Bearer ***"
    assert redact("wCFBaf29_LAbvsy80xH84V8TEUL4-U9VEMaTByvVTRc") == "***"
    keep = ["HuggingFaceTB/SmolLM2-135M-Instruct", "quickstart-rlcd@v1", "0123456789abcdef" * 4,
            "3f2a1b4c-1234-4abc-8def-0123456789ab", "OPENAI_API_KEY", "ThisIsAVeryLongCamelCaseIdentifier2024V3"]
    assert [redact(k) for k in keep] == keep
    assert redact_obj({"a": ["http://u:p@h"], "b": ("x", 1)}) == {"a": ["http://***@h"], "b": ("x", 1)}


# ----------------------------------------------------------------------------- caches


def test_a_corrupt_request_cache_names_the_file_and_cache_clear_fixes_it(tmp_path, capsys):
    cache = home() / "cache" / "requests.sqlite"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"this is not a database" * 100)
    with FaultServer() as s:
        p = openai_pipeline(tmp_path, s.url, limit=2)
        code, _, err = cli(capsys, "run", p)
        failed_cleanly(code, err, str(cache), "corrupt", "prefdata cache clear")
        code, out, err = cli(capsys, "cache", "clear")
        assert code == 0 and str(cache) in out and not cache.exists()
        code, _, err = cli(capsys, "run", p)
        assert code == 0, err


def test_cache_clear_also_removes_left_over_ray_shards(capsys):
    """Shards a crashed Ray run left beside the cache would be merged back in by the next run."""
    from prefdata.engines.cache import shard_dir

    cache = home() / "cache" / "requests.sqlite"
    cache.parent.mkdir(parents=True)
    sqlite3.connect(cache).close()
    shards = shard_dir(cache)
    shards.mkdir()
    (shards / "driver-worker.sqlite").write_bytes(b"x")
    code, out, _ = cli(capsys, "cache", "clear")
    assert code == 0 and not cache.exists() and not shards.exists() and str(shards) in out


def test_undecodable_cache_rows_name_the_file(tmp_path, capsys):
    with FaultServer() as s:
        code, _, err = cli(capsys, "run", openai_pipeline(tmp_path, s.url, limit=2))
        assert code == 0, err
        cache = home() / "cache" / "requests.sqlite"
        with sqlite3.connect(cache) as db:
            db.execute("UPDATE gen SET value = CAST(X'FFFE00' AS TEXT)")
        code, _, err = cli(capsys, "run", openai_pipeline(tmp_path, s.url, limit=2, output="again"))
    failed_cleanly(code, err, str(cache), "corrupt", "prefdata cache clear")


class _Flaky(sqlite3.Connection):
    """A connection whose statements fail the way a concurrent process or a full disk makes them."""
    fail: dict = {}

    def _maybe_fail(self, sql):
        for prefix, (left, message) in list(self.fail.items()):
            if sql.strip().upper().startswith(prefix) and left > 0:
                self.fail[prefix] = (left - 1, message)
                raise sqlite3.OperationalError(message)

    def execute(self, sql, *args):
        self._maybe_fail(sql)
        return super().execute(sql, *args)

    def executemany(self, sql, *args):
        self._maybe_fail(sql)
        return super().executemany(sql, *args)


@pytest.fixture
def flaky_sqlite(monkeypatch):
    real = sqlite3.connect
    _Flaky.fail = {}
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: real(*a, factory=_Flaky, **k))
    return _Flaky.fail


def test_a_concurrent_wal_switch_is_retried(tmp_path, capsys, flaky_sqlite):
    # Another process switching the fresh file to WAL at the same moment: "database is locked" at once,
    # without the busy timeout (seen in 2 of 7 concurrent runs).
    flaky_sqlite["PRAGMA JOURNAL_MODE=WAL"] = (2, "database is locked")
    with FaultServer() as s:
        code, _, err = cli(capsys, "run", openai_pipeline(tmp_path, s.url, limit=2))
    assert code == 0, err
    assert flaky_sqlite["PRAGMA JOURNAL_MODE=WAL"][0] == 0


def test_a_full_disk_in_the_cache_is_one_line(tmp_path, capsys, flaky_sqlite):
    flaky_sqlite["INSERT"] = (100, "database or disk is full")
    with FaultServer() as s:
        code, _, err = cli(capsys, "run", openai_pipeline(tmp_path, s.url, limit=2))
    failed_cleanly(code, err, str(home() / "cache" / "requests.sqlite"), "no space left")
    assert manifests() == []


# ----------------------------------------------------------------------------- YAML and overrides


@pytest.mark.parametrize("content, needle", [
    (b"42\n", "top level must be a mapping"),
    (b"steps: [\n  {name: a\n", "invalid YAML at line"),
    (b"name: caf\xe9\nsteps: []\n", "not UTF-8"),
    (b"steps: []\n", "'steps' is empty"),
])
def test_bad_yaml_is_one_line(tmp_path, capsys, content, needle):
    p = tmp_path / "bad.yaml"
    p.write_bytes(content)
    code, _, err = cli(capsys, "run", p)
    failed_cleanly(code, err, str(p), needle, only_line=True)


@pytest.mark.parametrize("override, needle", [
    ("name.x=1", "'name' is a str, not a mapping"),
    ("engine.model.x=1", "'engine.model' is a str, not a mapping"),
    ("steps.rlcd.config.max_tokens=[1", "cannot parse the value '[1'"),
    ("steps.rlcd.nope=1", "unknown key 'steps.rlcd.nope'"),
    ("steps.rlcd.max_failure_rate=2", "steps.rlcd.max_failure_rate"),
])
def test_bad_overrides_are_one_line_naming_the_step(tmp_path, capsys, override, needle):
    p = openai_pipeline(tmp_path, "http://127.0.0.1:1/v1", engine={"model": "m"})
    code, _, err = cli(capsys, "run", p, "--set", override)
    line = failed_cleanly(code, err, needle, only_line=True)
    assert "steps.0" not in line


def test_principles_file_that_is_not_yaml_is_one_line(tmp_path, capsys):
    binary = Path("/bin/sh").resolve()
    with FaultServer() as s:
        code, _, err = cli(capsys, "run", openai_pipeline(tmp_path, s.url, config={"principles_file": str(binary)}))
    failed_cleanly(code, err, str(binary), "cannot read it as YAML")


# ----------------------------------------------------------------------------- environment


def _refuse_mkdir_under_home(monkeypatch, err=errno.EROFS):
    real = os.mkdir
    root = str(home())

    def mkdir(path, *a, **k):
        if str(path).startswith(root):
            raise OSError(err, os.strerror(err), str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(os, "mkdir", mkdir)


def test_a_read_only_home_is_one_line_for_run_import_and_models_prepare(tmp_path, capsys, monkeypatch):
    src = tmp_path / "pairs.jsonl"
    src.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n" + json.dumps({"prompt": "q"}) + "\n")
    with FaultServer() as s:
        p = openai_pipeline(tmp_path, s.url, limit=2)
        _refuse_mkdir_under_home(monkeypatch)
        code, _, err = cli(capsys, "run", p)
        failed_cleanly(code, err, str(home()))
    for args in (["datasets", "import", src, "--name", "imp", "--on-error", "quarantine"], ["models", "prepare"]):
        code, _, err = cli(capsys, *args)
        failed_cleanly(code, err, str(home()), "Read-only file system")


def test_a_read_only_home_is_one_line_for_train(tmp_path, capsys, monkeypatch, tiny_model):
    from prefdata import store
    from prefdata.generators.common import pair_table

    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": "yes"}],
             "rejected": [{"role": "assistant", "content": "no"}], "source": "t"} for i in range(4)]
    v = store.commit("tr", pair_table(rows))
    _refuse_mkdir_under_home(monkeypatch, errno.EACCES)
    code, _, err = cli(capsys, "train", "reward", "--dataset", v.ref, "--model", tiny_model, "--set", "max_steps=1")
    failed_cleanly(code, err, str(home()), "Permission denied")


def test_a_full_disk_on_commit_is_one_line_naming_the_dataset(tmp_path, capsys, monkeypatch):
    import pyarrow.parquet as pq

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    with FaultServer() as s:
        code, _, err = cli(capsys, "run", openai_pipeline(tmp_path, s.url, limit=2))
    failed_cleanly(code, err, "No space left on device")
    assert manifests() == []


def test_export_where_no_file_can_be_created_is_one_line(tmp_path, capsys):
    from prefdata import store
    from prefdata.generators.common import pair_table

    rows = [{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
             "rejected": [{"role": "assistant", "content": "b"}], "source": "t"}]
    v = store.commit("ex", pair_table(rows))
    code, _, err = cli(capsys, "datasets", "export", v.ref, "--out", "/proc/prefdata-test/out.jsonl")
    failed_cleanly(code, err, "/proc/prefdata-test")


# ----------------------------------------------------------------------------- smaller items


def test_dedup_drops_duplicate_pairs_and_the_card_says_so(tmp_path, capsys):
    from pydantic import BaseModel

    from prefdata import store
    from prefdata.generators.common import pair_table
    from prefdata.pipeline import StepResult, register_step

    class Cfg(BaseModel):
        needs_engine: bool = False

    def fn(cfg, table, ctx):
        rows = [{"prompt": [{"role": "user", "content": f"q{i % 2}"}], "chosen": [{"role": "assistant", "content": "a"}],
                 "rejected": [{"role": "assistant", "content": "b"}], "source": "t"} for i in range(5)]
        return StepResult(tables={"train": pair_table(rows)})

    register_step("_test_dups", Cfg, fn)
    p = tmp_path / "d.yaml"
    p.write_text(yaml.safe_dump({"steps": [{"name": "d", "uses": "_test_dups", "input": "builtin:quickstart_prompts",
                                            "output": "dups", "limit": 1, "dedup": True}]}))
    code, _, err = cli(capsys, "run", p)
    assert code == 0, err
    v = store.resolve("dups")
    assert v.manifest["lineage"]["report"]["deduplicated"] == 3
    assert store.load_table(v.ref).num_rows == 2
    assert "## Deduplication" in Path(v.card_path).read_text()


def test_trust_remote_code_warns_once_and_the_card_shows_it(tmp_path, capsys):
    from prefdata import store

    with FaultServer() as s:
        p = openai_pipeline(tmp_path, s.url, limit=2, engine={"trust_remote_code": True})
        code, _, err = cli(capsys, "run", p)
    assert code == 0, err
    assert err.count("warning: trust_remote_code is on") == 1
    card = Path(store.resolve("api-pairs").card_path).read_text()
    assert "## Warnings" in card and "trust_remote_code is on" in card
