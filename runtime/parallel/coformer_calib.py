"""Calibration of coformer's sub-models (DeBo's second step): progressive distillation
from the parent, then end to end.

    cal = calibrate(adapter, world_size=2, k=4, data=train_images, steps=150, final_steps=300)
    cal.save("data/fidelity/coformer/vit_digits_p2_k4.safetensors")     # + .json card
    create_strategy("coformer", weights="data/fidelity/coformer/vit_digits_p2_k4.safetensors")

What is trained: every device's sub-model tensors (its q/k/v rows, proj columns, fc1
rows and bias, fc2 columns: runtime/parallel/coformer.py's SubShard) and its two bias
corrections; the parent (embedding, norms, biases, head) stays frozen and shared.

Stage j = 0 .. L-1 (progressive, block by block): the sub-models run blocks 0 .. j-1 as
already calibrated (no gradient; their streams at block j's input are computed once per
stage over the whole data set), then block j; the loss is the normalised squared error
between x0 + sum_r u_r after block j (the aggregated stream: at an aggregation point it
is what every device continues from, inside a group it is what an aggregation there
would give) and the parent's hidden state t after block j, relative to what the
parent's blocks add since the group's input x0: sum((a - t)^2) / sum((t - x0)^2).
Only block j's tensors move. Then `final_steps` end to end (step `final_lr`): every sub-model tensor,
loss = KL(parent logits || sub-model logits) at temperature `temperature` (times T^2)
plus the normalised squared error of the final normed features, through
runtime.train.emulate.EmulatedModel (the strategy's own block_step per rank, the
all-reduce as an in-memory sum), so the calibrated forward is the runtime's.

Adam with a relative step: `lr` times the rms of each sub-model shard's weight
matrices (so one lr fits models of any weight scale), decaying linearly to 0 over a
stage; minibatches of `batch` drawn with a seeded generator (deterministic for a seed on
one thread count). Each stage's loss is measured before and after it on the same (up to
512; end to end 256) samples of `data`; a stage that would end worse is undone.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from .base import DistContext, create_strategy
from .coformer import (CARD_KIND, RESIDUAL_FAMILIES, Streams, card_path, emulate_block,
                       virtual_aggregate)


@dataclass
class Calibration:
    """Calibrated sub-models: per-rank CoStates (trained in place), the tensors to save,
    the JSON card, and the loss of every stage [before, after] on fixed evaluation samples."""

    states: list
    card: dict
    losses: dict = field(default_factory=dict)

    def tensors(self) -> dict:
        return {f"block{i}.rank{r}.{name}": t.detach().contiguous().clone()
                for r, st in enumerate(self.states) for i, sh in enumerate(st.shards)
                for name, t in sh.tensors().items()}

    def save(self, path: str, **extra) -> str:
        """Write `path` (.safetensors) and its card (.json, schema_version 1); `extra`
        entries are added to the card (e.g. accuracy before / after). Returns path."""
        from safetensors.torch import save_file

        if not path.endswith(".safetensors"):
            raise ValueError(f"{path!r}: calibrated sub-models are saved as .safetensors")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        save_file(self.tensors(), path, metadata={"kind": CARD_KIND})
        card = {**self.card, **extra}
        tmp = card_path(path) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(card, f, indent=1)
            f.write("\n")
        os.replace(tmp, card_path(path))
        return path


def build_states(adapter, world_size: int, strategy) -> list:
    """Every rank's prepared coformer state (what each GLOO rank's runner would hold)."""
    out = []
    for r in range(world_size):
        ctx = DistContext(r, world_size)
        out.append(strategy.prepare(adapter, ctx, strategy.plan(adapter, ctx, 1)))
    return out


def streams_forward(adapter, states: list, x0: torch.Tensor, start: int, stop: int,
                    streams: Optional[list] = None) -> list:
    """Blocks [start, stop) of every device's sub-model in one process (no masks: the
    residual families calibrated here have none); `streams` the devices' Streams at
    `start` (default: every device at x0, right after an aggregation)."""
    s = streams if streams is not None else [Streams(x0, x0, None) for _ in states]
    for i in range(start, stop):
        s = emulate_block(states, i, s)
    return s


def _nmse(a, t, base=None):
    """sum((a - t)^2) / sum((t - base)^2): the error relative to what the parent's blocks
    add to `base` (the group's input stream; None: relative to t itself)."""
    ref = t if base is None else t - base
    return (a - t).pow(2).sum() / ref.pow(2).sum().clamp_min(1e-12)


def _log(progress, msg):
    if progress:
        print(f"[coformer calibrate] {msg}", file=sys.stderr, flush=True)


def calibrate(adapter, world_size: int, k: Optional[int] = None, heads=None, cols=None, *,
              steps: int = 150, final_steps: int = 300, data: Optional[torch.Tensor] = None,
              batch: int = 64, lr: float = 0.05, final_lr: float = 0.02, temperature: float = 2.0, seed: int = 0,
              assign: str = "importance", data_name: str = "", parent: str = "",
              progress: bool = False) -> Calibration:
    """Calibrate coformer's sub-models of `adapter` at P = world_size, aggregation every
    k blocks (default depth), widths heads / cols (default even), from the parent's
    outputs on `data` (model inputs, e.g. (n, 3, H, W) images; default 256 random
    inputs of adapter.make_inputs). Returns a Calibration (module docstring)."""
    fam = getattr(adapter, "family", "?")
    if fam not in RESIDUAL_FAMILIES:
        raise ValueError(f"coformer calibration needs an additive residual stream (families "
                         f"{list(RESIDUAL_FAMILIES)}), not {fam!r}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 2:
        raise ValueError(f"world_size={world_size!r} must be an integer >= 2")
    for name, v in (("steps", steps), ("final_steps", final_steps), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "batch" else 0):
            raise ValueError(f"{name}={v!r} must be an integer >= {1 if name == 'batch' else 0}")
    for name, v in (("lr", lr), ("final_lr", final_lr), ("temperature", temperature)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{name}={v!r} must be a number > 0")
    strategy = create_strategy("coformer", k=k, heads=heads, cols=cols, assign=assign)
    plan = strategy.plan(adapter, DistContext(0, world_size), 1)
    if plan.k == 1:
        raise ValueError("k=1 is tensor_parallel exactly: nothing to calibrate (use k >= 2)")
    if data is None:
        data = adapter.make_inputs(256, seed=seed)
    if not isinstance(data, torch.Tensor) or data.shape[0] < 1:
        raise ValueError("data must be a tensor of model inputs with at least one sample")
    t_start = time.time()
    states = build_states(adapter, world_size, strategy)
    params = list(adapter.model.parameters())
    was = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    n, L = data.shape[0], adapter.shape.n_layers
    losses = {}
    evals = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))[:512]
    try:
        with torch.no_grad():                      # the parent's hidden states and outputs
            hid = [adapter.embed(data)]
            for i in range(L):
                hid.append(adapter.block(i, hid[-1]))
            t_logits, t_feats = adapter.reference(data)
        starts = sorted({0} | {i + 1 for i, s in states[0].points if i + 1 < L})
        for j in range(L):
            g0 = max(s for s in starts if s <= j)           # the group's first block
            with torch.no_grad():
                x_g0 = hid[0] if g0 == 0 else _aggregated(adapter, states, hid[0], g0)
                pre = streams_forward(adapter, states, x_g0, g0, j)
            train = [st.shards[j] for st in states]

            def stage_loss(idx, j=j, pre=pre):
                out = virtual_aggregate(emulate_block(states, j, [_take(s, idx) for s in pre]))
                return _nmse(out, hid[j + 1][idx], pre[0].x0[idx])

            losses[f"block{j}"] = _fit(train, steps, batch, lr, gen, n, stage_loss, evals)
            _log(progress, f"block {j}: loss {losses[f'block{j}'][0]:.4f} -> {losses[f'block{j}'][1]:.4f}")
        if final_steps:
            losses["end_to_end"] = _end_to_end(adapter, strategy, states, data, t_logits, t_feats,
                                               final_steps, batch, final_lr, temperature, gen, evals[:256])
            _log(progress, f"end to end: loss {losses['end_to_end'][0]:.4f} -> {losses['end_to_end'][1]:.4f}")
    finally:
        for p, w in zip(params, was):
            p.requires_grad_(w)
        for st in states:
            for sh in st.shards:
                for t in sh.parameters():
                    t.requires_grad_(False)
    s = adapter.shape
    card = {
        "schema_version": 1, "kind": CARD_KIND, "model": getattr(adapter, "name", "?"),
        "parent": parent, "family": fam,
        "shape": {"d": s.d, "heads": s.heads, "d_ff": s.d_ff, "n_layers": s.n_layers, "seq_len": s.seq_len},
        "n_layers": s.n_layers, "world_size": world_size, "k": plan.k,
        "heads": list(plan.heads_split), "cols": list(plan.cols_split), "assign": assign,
        "assignment": [[[list(sh.heads_idx), list(sh.cols_idx)] for sh in (st.shards[i] for st in states)]
                       for i in range(s.n_layers)],
        "calibration": {"steps_per_block": steps, "final_steps": final_steps, "batch": batch, "lr": lr,
                        "final_lr": final_lr,
                        "temperature": temperature, "seed": seed, "samples": n, "data": data_name,
                        "threads": torch.get_num_threads(), "seconds": round(time.time() - t_start, 1),
                        "losses_first_last": losses},
    }
    return Calibration(states, card, losses)


def _take(s: Streams, idx) -> Streams:
    return Streams(s.x[idx], s.x0[idx], None if s.u is None else s.u[idx])


def _aggregated(adapter, states, x_embed, stop: int) -> torch.Tensor:
    """The aggregated stream after block stop-1 (an aggregation point), from the embedding."""
    out = []
    for a in range(0, x_embed.shape[0], 256):
        out.append(virtual_aggregate(streams_forward(adapter, states, x_embed[a:a + 256], 0, stop)))
    return torch.cat(out)


def _groups(shards: list, lr: float) -> list:
    """Adam parameter groups, one per SubShard: lr relative to the rms of its weight
    matrices (biases and corrections take their shard's), so a step moves every tensor by
    about the same fraction whatever the model's weight scale."""
    out = []
    for sh in shards:
        mats = [t for t in (sh.wqkv, sh.wproj, sh.wfc1, sh.wfc2) if t is not None and t.numel()]
        rms = (sum(t.detach().pow(2).sum() for t in mats) / sum(t.numel() for t in mats)).sqrt().item() \
            if mats else 1.0
        out.append({"params": sh.parameters(), "lr": lr * max(rms, 1e-6)})
    return out


def _fit(shards: list, steps: int, batch: int, lr: float, gen, n: int, loss_fn, evals) -> list:
    """Adam on the shards' tensors for `steps` minibatches, lr decaying linearly to 0;
    returns [loss before, loss after] on the fixed samples `evals`. A stage that ends
    worse than it began restores its tensors (and reports the loss it kept)."""
    with torch.no_grad():
        before = loss_fn(evals).item()
    train = [t for sh in shards for t in sh.parameters()]
    if not steps or not train:
        return [before, before]
    keep = [t.detach().clone() for t in train]
    for t in train:
        t.requires_grad_(True)
    opt = torch.optim.Adam(_groups(shards, lr))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / steps)
    for step in range(steps):
        idx = torch.randint(0, n, (min(batch, n),), generator=gen)
        loss = loss_fn(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    for t in train:
        t.requires_grad_(False)
    with torch.no_grad():
        after = loss_fn(evals).item()
        if not after <= before:
            for t, k in zip(train, keep):
                t.copy_(k)
            after = before
    return [before, after]


def _end_to_end(adapter, strategy, states, data, t_logits, t_feats, steps, batch, lr, T, gen, evals):
    """Every sub-model tensor, through the emulated runtime forward (EmulatedModel)."""
    from ..train.emulate import EmulatedModel

    em = EmulatedModel(adapter, strategy, len(states))
    for run, st in zip(em.runners, states):
        run.state = st                      # the runners' own forward on these sub-models
    train = [sh for st in states for sh in st.shards]

    def loss_fn(idx):
        out = em(data[idx], features=True)
        kd = F.kl_div(F.log_softmax(out.logits / T, -1), F.log_softmax(t_logits[idx] / T, -1),
                      log_target=True, reduction="batchmean") * T * T
        return kd + _nmse(out.features, t_feats[idx])

    try:
        return _fit(train, steps, batch, lr, gen, data.shape[0], loss_fn, evals)
    finally:
        em.close()


def submodel_logits(adapter, states: list, inputs: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Rank 0's logits of the sub-models in one process (evaluation without GLOO)."""
    out = []
    with torch.no_grad():
        for a in range(0, inputs.shape[0], chunk):
            x = adapter.embed(inputs[a:a + chunk])
            s = streams_forward(adapter, states, x, 0, adapter.shape.n_layers)
            out.append(adapter.head(adapter.final_norm(s[0].x)))
    return torch.cat(out)
