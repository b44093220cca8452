"""RLCD prompt construction (Yang et al. 2023, arXiv 2307.12950), in our own wording.

p+ and p- are built from the same dialogue and differ only by the descriptor phrase, so any
difference between o+ and o- is attributable to that phrase (the paper's design rule: the two
prompts look as alike as possible on the surface). The descriptor is attached to the assistant's
turn as a parenthesised tag; earlier assistant turns carry the opposite descriptor, as the method
prescribes for multi-turn prefixes.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

from prefdata.errors import ConfigError

TEMPLATE_VERSION = "rlcd-prompt-2"
PRINCIPLES_FILE = Path(__file__).with_name("rlcd_principles.yaml")

SYSTEM = "You are an assistant. Your next reply must be {descriptor}."
# Earlier assistant turns are marked with the opposite descriptor, so the contrast the model sees in
# the history points the same way as the instruction for the new turn.
EARLIER = "({descriptor}) "


@lru_cache(maxsize=8)
def load_principles(path: str | None = None) -> tuple[str, dict[str, list[tuple[str, str]]]]:
    """Return (version, {set name: [(positive, negative), ...]}) from a YAML file."""
    p = Path(path) if path else PRINCIPLES_FILE
    if not p.is_file():
        raise ConfigError(f"principles file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        why = e.strerror if isinstance(e, OSError) else "not UTF-8 text" if isinstance(e, UnicodeDecodeError) \
            else "invalid YAML"
        raise ConfigError(f"principles file {p}: cannot read it as YAML ({why})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("sets"), dict) or not raw.get("version"):
        raise ConfigError(f"{p}: needs 'version' and 'sets: {{name: [[positive, negative], ...]}}'")
    sets: dict[str, list[tuple[str, str]]] = {}
    for name, pairs in raw["sets"].items():
        if not pairs:
            raise ConfigError(f"{p}: sets.{name} is empty")
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) and x.strip() for x in pair)):
                raise ConfigError(f"{p}: sets.{name}[{i}] must be [positive, negative] strings")
        sets[name] = [(a.strip(), b.strip()) for a, b in pairs]
    return str(raw["version"]), sets


def build_messages(prompt: list[dict], descriptor: str, opposite: str) -> tuple[list[dict], str]:
    """Messages for one side of the contrast, plus the assistant prefix the model continues ("").

    The descriptor goes in the system turn (small chat models follow a system instruction far more
    reliably than an in-line tag); earlier assistant turns carry the opposite descriptor.
    """
    system = SYSTEM.format(descriptor=descriptor)
    msgs = []
    for m in prompt:
        if m["role"] == "system":
            # Keep a user's own system instructions, after ours, in one system turn: some chat
            # templates reject two.
            system += "\n\n" + m["content"]
        elif m["role"] == "assistant":
            msgs.append({"role": "assistant", "content": EARLIER.format(descriptor=opposite) + m["content"]})
        else:
            msgs.append({"role": m["role"], "content": m["content"]})
    return [{"role": "system", "content": system}] + msgs, ""
