"""A multi-objective reward model with a prompt-conditioned gate, after ArmoRM (Wang et al. 2024,
"Interpretable Preferences via Multi-Objective Reward Modeling and Mixture-of-Experts", arXiv 2406.12845).

    prefdata train armo --dataset conditional-pairs@latest
    python -m trainers.armo --dataset pairs.parquet --set backbone=smollm2 --set gate_steps=400

Like ArmoRM the backbone is frozen, and its features are computed once (cached, `prefdata.rewards.features`):
1. One linear head per aspect, r_k(x, y) = w_k . phi(x, y), each fit on the pairs labelled with
   that aspect. ArmoRM regresses absolute ratings; our labels are pairwise ("chosen is better on
   helpfulness"), so each head is a Bradley-Terry fit instead (`prefdata.rewards.heads.train_head`).
2. A gating network on the prompt's own features, g(x) = softmax(MLP(phi(x))), mixes them:
   R(x, y) = scale * sum_k g_k(x) r_k(x, y). The heads stay fixed while the gate and the scale are
   fit with the Bradley-Terry loss on every pair.
(ArmoRM also removes each head's correlation with length; not done here.)

Aspect-labelled pairs are what the conditional generator writes (RMBoost edits): `meta.aspects`
names the aspects the edit changed, and the chosen answer is the better one on each, whichever
direction was drawn. A column `aspects` (list) or `aspect` (string) works too. The card reports each
head's accuracy on the held-out pairs of its aspect and the gated reward's accuracy on all of them.

The output folder holds `armo.safetensors` (heads, gate, feature scaling), `armo.json` (aspects,
backbone) and the card; `ArmoRewardModel.load(folder).score(prompts, answers)` gives the reward,
each aspect's reward and the gate weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from prefdata.errors import PrefdataError
from prefdata.rewards.features import Backbone, FeatureCache, pair_features, render
from prefdata.rewards.heads import train_head
from trainers import common


class ArmoTrainConfig(BaseModel):
    """`prefdata train armo`: every field is a YAML key and a --set override."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    dataset: str = Field("", description="Store ref or file of aspect-labelled pairs (the conditional generator's).")
    model: str = Field("smollm2", description="Frozen backbone: 'smollm2' (embedded SmolLM2-135M, last+mean pool), "
                       "'minilm', or a local path / hub id (mean pool).")
    output_dir: str | None = Field(None, description="A folder for heads, gate and card; default: a new model "
                                   "version armo-<dataset>@vN under $PREFDATA_HOME/models/trained/.")
    max_length: int = Field(512, ge=16, le=131072, description="Tokens per prompt+answer the backbone reads.")
    head_l2: float = Field(1e-2, ge=0, le=10, description="L2 penalty on each aspect head's weights, in [0, 10].")
    head_steps: int = Field(100, ge=1, le=10000, description="L-BFGS iterations per aspect head (convex fit).")
    gate_hidden: int = Field(64, ge=1, le=4096, description="Hidden units of the gating MLP (ArmoRM: a small MLP "
                             "on the prompt's last-token state).")
    gate_steps: int = Field(300, ge=1, le=100000, description="AdamW steps (full batch) for the gate and scale.")
    learning_rate: float = Field(3e-3, gt=0, le=1, description="AdamW step size for the gate, in (0, 1].")
    min_aspect_pairs: int = Field(2, ge=1, description="An aspect with fewer training pairs gets no head (counted).")
    eval_fraction: float = Field(0.2, ge=0, le=0.5, description="Held-out share of pairs for the per-aspect "
                                 "accuracies, in [0, 0.5]; needs >= 10 pairs.")
    batch_size: int = Field(16, ge=1, description="Texts per backbone forward pass.")
    seed: int = Field(0, description="Seed for the split, the heads and the gate.")
    trust_remote_code: bool = Field(False, description="Allow model code from the checkpoint (hub models only).")


Config = ArmoTrainConfig


# ----------------------------------------------------------------------------- data


def pair_aspects(ds) -> list[list[str]]:
    """Per pair, the aspects on which the chosen answer is the better one (may be empty)."""
    cols = ds.column_names
    if "aspects" in cols:
        return [list(a or []) for a in ds["aspects"]]
    if "aspect" in cols:
        return [[a] if a else [] for a in ds["aspect"]]
    if "meta" not in cols:
        return [[] for _ in range(len(ds))]
    out = []
    for i, m in enumerate(ds["meta"]):
        try:
            meta = json.loads(m) if isinstance(m, str) and m else (m or {})
        except json.JSONDecodeError:
            from prefdata.errors import DataError

            raise DataError("meta is not JSON", file="dataset", row=i + 1, field="meta") from None
        a = meta.get("aspects") if isinstance(meta, dict) else None
        out.append([str(x) for x in a] if isinstance(a, list) else [])
    return out


# ----------------------------------------------------------------------------- model


class Gate(torch.nn.Module):
    def __init__(self, d: int, k: int, hidden: int):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, k))
        self.log_scale = torch.nn.Parameter(torch.zeros(()))

    def forward(self, xp):  # (n, d) -> (n, K) weights summing to 1
        return torch.softmax(self.mlp(xp), dim=-1)


class ArmoRewardModel:
    """Heads (K, d) on standardised answer features, a gate on standardised prompt features."""

    def __init__(self, aspects, w, mu, sd, mu_p, sd_p, gate: Gate, backbone: dict):
        self.aspects, self.w, self.mu, self.sd, self.mu_p, self.sd_p = aspects, w, mu, sd, mu_p, sd_p
        self.gate, self.backbone_cfg = gate.eval().requires_grad_(False), backbone  # scoring only
        self._backbone = None

    def combine(self, x: np.ndarray, xp: np.ndarray) -> dict:
        """Raw answer features (n, d) and prompt features (n, dp) -> reward (n,), aspects (n, K), gates (n, K)."""
        per = ((x - self.mu) / self.sd) @ self.w.T  # (n, K)
        with torch.no_grad():
            g = self.gate(torch.from_numpy((xp - self.mu_p) / self.sd_p).float()).numpy()
            scale = float(self.gate.log_scale.exp())
        return {"reward": scale * (g * per).sum(1), "aspects": per, "gates": g}

    def score(self, prompts: list, answers: list, progress: bool = False) -> dict:
        """Rewards for (prompt messages, answer messages) pairs; see `combine`."""
        if self._backbone is None:
            self._backbone = Backbone(**self.backbone_cfg)
        from prefdata.rewards.features import split_render

        x = self._backbone.embed([split_render(p, a) for p, a in zip(prompts, answers)], FeatureCache(), progress)
        xp = self._backbone.embed([render(p, []) for p in prompts], FeatureCache(), progress)
        return self.combine(x, xp)

    def save(self, out: Path) -> None:
        from safetensors.torch import save_file

        t = {"w": self.w, "mu": self.mu, "sd": self.sd, "mu_p": self.mu_p, "sd_p": self.sd_p}
        tensors = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in t.items()}
        tensors.update({f"gate.{k}": v.detach().clone() for k, v in self.gate.state_dict().items()})
        save_file(tensors, str(out / "armo.safetensors"))
        (out / "armo.json").write_text(json.dumps({"aspects": self.aspects, "backbone": self.backbone_cfg,
                                                   "gate_hidden": self.gate.mlp[0].out_features}, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> ArmoRewardModel:
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "armo.json").is_file():
            raise PrefdataError(f"{folder}: no armo.json, so not a multi-objective reward model from `train armo`")
        meta = json.loads((folder / "armo.json").read_text())
        t = load_file(str(folder / "armo.safetensors"))
        arr = {k: t[k].numpy().astype(np.float64) for k in ("w", "mu", "sd", "mu_p", "sd_p")}
        gate = Gate(arr["mu_p"].shape[0], len(meta["aspects"]), meta["gate_hidden"])
        gate.load_state_dict({k[5:]: v for k, v in t.items() if k.startswith("gate.")})
        return cls(meta["aspects"], arr["w"], arr["mu"], arr["sd"], arr["mu_p"], arr["sd_p"], gate, meta["backbone"])


# ----------------------------------------------------------------------------- training


def _fit_gate(dc, xp, cfg: ArmoTrainConfig, log: list[dict]) -> Gate:
    """dc: (n, K) per-aspect reward differences chosen - rejected; xp: (n, dp) standardised prompts."""
    torch.manual_seed(cfg.seed)
    gate = Gate(xp.shape[1], dc.shape[1], cfg.gate_hidden)
    opt = torch.optim.AdamW(gate.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    d, p = torch.from_numpy(dc).float(), torch.from_numpy(xp).float()
    every = max(1, cfg.gate_steps // 50)
    for step in range(1, cfg.gate_steps + 1):
        opt.zero_grad()
        margin = gate.log_scale.exp() * (gate(p) * d).sum(1)  # (n,) R(chosen) - R(rejected)
        loss = torch.nn.functional.softplus(-margin).mean()
        loss.backward()
        opt.step()
        if step % every == 0 or step == cfg.gate_steps:
            log.append({"step": step, "loss": loss.item(), "accuracy": float((margin.detach() > 0).float().mean())})
    return gate


@common.atomic_output("armo")
def train(cfg: ArmoTrainConfig) -> Path:
    """Fit heads and gate, save them with the card; returns the card path."""
    ds, prov = common.load_dataset_ref(cfg.dataset, "pair")
    common.require_columns(ds, ["prompt", "chosen", "rejected"], "the multi-objective reward model")
    ds, ties = common.resolve_ties(ds, soft=False, what="the multi-objective reward model")
    labels = pair_aspects(ds)
    aspects = sorted({a for ls in labels for a in ls})
    if not aspects:
        raise PrefdataError(f"{cfg.dataset}: no pair names an aspect (meta.aspects, or an `aspects`/`aspect` column); "
                            "the conditional generator writes them")
    n = len(ds)
    rng = np.random.default_rng(cfg.seed)
    test = np.zeros(n, dtype=bool)
    if cfg.eval_fraction > 0 and n >= 10:
        test[rng.permutation(n)[: max(1, round(cfg.eval_fraction * n))]] = True
    kw = {"name": cfg.model, "max_length": cfg.max_length, "batch_size": cfg.batch_size,
          "trust_remote_code": cfg.trust_remote_code}
    backbone = Backbone(**kw)
    table = ds.select_columns(["prompt", "chosen", "rejected"]).flatten_indices().data.table
    cache = FeatureCache()
    feats = pair_features(table, backbone, cache, progress=True)
    xp = backbone.embed([render(p, []) for p in ds["prompt"]], cache, progress=True)
    xc, xr = feats.chosen.astype(np.float64), feats.rejected.astype(np.float64)
    train_rows = ~test
    both = np.concatenate([xc[train_rows], xr[train_rows]])
    mu, sd = both.mean(0), both.std(0) + 1e-6
    mu_p, sd_p = xp[train_rows].mean(0), xp[train_rows].std(0) + 1e-6
    zc, zr, zp = (xc - mu) / sd, (xr - mu) / sd, (xp - mu_p) / sd_p
    has = np.array([[a in ls for a in aspects] for ls in labels])  # (n, K)
    kept, w, skipped = [], [], {}
    for k, a in enumerate(aspects):
        rows = has[:, k] & train_rows
        if rows.sum() < cfg.min_aspect_pairs:
            skipped[a] = int(rows.sum())
            continue
        head = train_head(zc[rows].astype(np.float32), zr[rows].astype(np.float32), seed=cfg.seed + k,
                          l2=cfg.head_l2, steps=cfg.head_steps)
        w.append(head(np.eye(zc.shape[1], dtype=np.float32)))  # a bias-free linear head: r(e_i) = w_i
        kept.append(a)
    if not kept:
        raise PrefdataError(f"no aspect has {cfg.min_aspect_pairs} training pairs (have: {skipped})")
    w = np.stack(w).astype(np.float64)  # (K, d)
    has = has[:, [aspects.index(a) for a in kept]]
    dc = zc @ w.T - zr @ w.T  # (n, K) per-aspect reward differences
    log: list[dict] = []
    gate = _fit_gate(dc[train_rows], zp[train_rows], cfg, log)
    model = ArmoRewardModel(kept, w, mu, sd, mu_p, sd_p, gate, kw)
    on_c = model.combine(xc, xp)
    rc, rr, gates = on_c["reward"], model.combine(xr, xp)["reward"], on_c["gates"]
    extra = {"pairs": n, "train_pairs": int(train_rows.sum()), "heldout_pairs": int(test.sum()), "aspects": kept,
             "aspects_without_head": skipped, **(ties or {}), "per_aspect": {}}
    for k, a in enumerate(kept):
        tr, te = has[:, k] & train_rows, has[:, k] & test
        extra["per_aspect"][a] = {
            "train_pairs": int(tr.sum()), "heldout_pairs": int(te.sum()),
            "train_accuracy": float((dc[tr, k] > 0).mean()) if tr.any() else None,
            "heldout_accuracy": float((dc[te, k] > 0).mean()) if te.any() else None,
            "mean_gate": float(gates[:, k].mean())}
    extra["gated_train_accuracy"] = float((rc > rr)[train_rows].mean())
    if test.any():
        extra["gated_heldout_accuracy"] = float((rc > rr)[test].mean())
        extra["eval"] = {"pairs": int(test.sum()), "reward_accuracy": extra["gated_heldout_accuracy"]}
    cfg.output_dir = cfg.output_dir or common.default_output_dir("armo", prov)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out)
    card = common.write_model_card(str(out), "armo", cfg, prov, log, extra)
    with card.open("a") as f:
        f.write(aspect_table(extra))
    held = (f"gated held-out accuracy {extra['gated_heldout_accuracy']:.3f} on {extra['heldout_pairs']} pairs"
            if "gated_heldout_accuracy" in extra else "no held-out pairs (fewer than 10 pairs or eval_fraction 0)")
    print(f"armo: {len(kept)} aspect heads, {held}", file=sys.stderr)
    return card


def aspect_table(extra: dict) -> str:
    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    rows = [f"| {a} | {m['train_pairs']} | {m['heldout_pairs']} | {f(m['train_accuracy'])} | "
            f"{f(m['heldout_accuracy'])} | {m['mean_gate']:.3f} |" for a, m in extra["per_aspect"].items()]
    return "\n".join(["## Per-aspect accuracy", "",
                      ("Each aspect's head on the pairs labelled with that aspect (chosen better on it); the gate "
                       "weight is its mean over the dataset's prompts."), "",
                      "| aspect | train pairs | held-out pairs | train accuracy | held-out accuracy | mean gate |",
                      "|---|---|---|---|---|---|", *rows, ""])


def main(argv: list[str] | None = None) -> None:
    from trainers.cli import run_from_argv

    run_from_argv("armo", argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
