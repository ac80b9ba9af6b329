"""How well ``head`` and ``head+backbone`` estimate the augmentation policy's hypergradient, against an unroll.

A short search with a learned per-class policy (``augment="learned"``, ``engine="head"``, the default
``augment_hypergrad="backbone"``) runs on the embedded ``digits-lt``. At ``--states`` hyper-steps spread through
its upper phase, right after the trainer's own hyper-step, a callback computes the hypergradient of the policy's
raw parameters A (probability and magnitude logits; α's part is left out) three ways:

- ``head``: the head engine on the trainer's feature problem (the classifier's refit to the features of the
  newest training batch, replayed with a graph to A), as ``Bilevel.hypergradient`` computes it;
- ``head+backbone``: that plus :func:`ab_plugin.hypergrad.backbone_policy_grad` as the bilevel core
  adds it (``-lr·interval·(∂²_{Aθ} ℓ_train) ∇_θ L_val`` over the backbone, one training and one validation batch);
- the reference: ``d L_val(θ_K(A)) / dA`` through K = ``interval`` differentiable lower SGD steps of the whole
  network (the trainer's optimizer: current lr, momentum buffers, weight decay) by the ``unrolled`` engine
  (``higher``), each step on a training batch of the trainer's buffer under fresh augmentation draws, the
  validation objective on the trainer's validation batches in eval mode (as the head engine's features and the
  backbone term see them); averaged over ``--draws`` draws (K batches picked from the buffer, augmentation).

Each estimate is also drawn ``--estimate-draws`` times (draw 0: the draws the batch was trained with, as the
trainer's hyper-step uses them; the others: fresh augmentation draws of the same batch).
``cos`` is the mean single-draw cosine with the reference (what one hyper-step gets),
``cos_of_mean`` the cosine of the draws' mean (the estimate's direction with less of its own noise). Reported per
state and averaged: cosine with the reference (all of A, the probability logits, the magnitude logits),
‖estimate‖ / ‖reference‖, the fraction of entries with the reference's sign, the reference's noise floor (the
cosine between the mean of the first half of its draws and that of the second half) and the seconds each costs.
The probability logits' gradient is the straight-through gate's surrogate in all three (``policies/_ops.py``);
the magnitudes' is pathwise. The run is not changed: the random state is forked around the measurement, the
engines work on copies, and the model, optimizer state, α and A are checked bit for bit afterwards.

    python benchmarks/policy_hypergrad.py --out benchmarks/results/policy_hypergrad.json
    python benchmarks/policy_hypergrad.py --epochs 1 --upper-start 0 --n-max 40 --batch-size 16 --interval 2 \\
        --states 1 --draws 2 --estimate-draws 2 --out /tmp/policy_hypergrad.json      # the test's: ~10 CPU s

The default run took 3.7 CPU minutes on one thread (the reference's 8 unrolls per state are most of it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from protocol_q import machine, revision  # noqa: E402

from ab_plugin.callbacks import TrainerCallback  # noqa: E402

ESTIMATES = ("head", "head+backbone")
PARTS = ("all", "probability", "magnitude")  # A = [probability_logit, magnitude_logit]


def compare(est: list, ref: list) -> dict[str, dict[str, float]]:
    """Cosine, norm ratio and sign agreement of ``est`` with ``ref`` over all of A and per part."""
    import torch

    out = {}
    for part, pick in zip(PARTS, (slice(None), slice(0, 1), slice(1, 2)), strict=True):
        if not est[pick]:  # a bank's A is one tensor: no magnitude part
            out[part] = {"cos": math.nan, "rel_norm": math.nan, "sign": math.nan}
            continue
        e = torch.cat([g.reshape(-1).double() for g in est[pick]])
        r = torch.cat([g.reshape(-1).double() for g in ref[pick]])
        den = float(e.norm() * r.norm())
        out[part] = {"cos": float(e @ r) / den if den > 0 else math.nan,
                     "rel_norm": float(e.norm() / r.norm()) if float(r.norm()) > 0 else math.nan,
                     "sign": float((torch.sign(e) == torch.sign(r)).double().mean())}
    return out


class Clock:
    """Wall and CPU (this process) seconds of a block; the CPU time is what counts on a shared machine."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def mean_of(grads: list[list]) -> list:
    import torch

    return [torch.stack(gs).mean(0) for gs in zip(*grads, strict=True)]


def snapshot(trainer) -> list:
    """Everything of the run the measurement could move: weights, buffers, optimizer state, α and A."""
    state = [t.detach().clone() for t in trainer.model.state_dict().values()]
    for s in trainer.optimizer.state.values():
        state += [v.detach().clone() for v in s.values() if hasattr(v, "detach")]
    return state + [h.detach().clone() for h in trainer.bilevel.hparams.all]


class Recorder:
    """Keeps the raw input batches the trainer pushes to its bilevel core (the head engine's buffer holds
    features, and the raw inputs of the newest batch only): the reference unrolls through them."""

    def __init__(self, trainer, keep: int) -> None:
        from collections import deque

        self.batches: deque = deque(maxlen=keep)
        push = trainer.bilevel.push

        def recording(target, *, features=None, inputs=None, draws=None):
            self.batches.append((inputs, target))
            push(target, features=features, inputs=inputs, draws=draws)

        trainer.bilevel.push = recording


def measure(trainer, recorder: Recorder, args: argparse.Namespace, index: int) -> dict[str, Any]:
    """The three hypergradients of A at the trainer's current state, compared (the run is left as it was).

    Estimate draw 0 is what the trainer's hyper-step computes (the newest batch replayed with the draws it was
    trained with); draws 1.. replay that batch under fresh augmentation draws."""
    import dataclasses

    import torch

    from ab_plugin.hypergrad import ModelProblem, UnrolledEngine
    from ab_plugin.schedule import lr_at

    cfg0, core = trainer.cfg, trainer.bilevel
    n_loss = len(core.hparams.loss)
    before = snapshot(trainer)
    base = 7919 * (index + 1) + cfg0.seed
    est: dict[str, list] = {"head": [], "backbone": []}
    clocks: dict[str, list[Clock]] = {"head": [], "backbone": [], "reference": []}
    ref: list = []
    lr = lr_at(trainer.state.step, trainer.steps_per_epoch, cfg0)
    p = trainer.pipeline
    fresh = dataclasses.replace(p, train_input=lambda x, y, draws: p.train_input(x, y, None))

    def val_forward(x, model=None):
        m = model if model is not None else trainer.model
        was = m.training
        m.train(False)
        try:
            return p.val_logits(x, m)
        finally:
            m.train(was)

    policy = trainer.policy
    bank = hasattr(policy, "bank_draws")
    newest = core._buffer[-1]
    trained_draws, own = newest.draws, core.augment_hypergrad
    with torch.random.fork_rng(devices=[]):
        try:
            for e in range(args.estimate_draws):
                torch.manual_seed(base + e)
                pipeline = p if e == 0 or bank else fresh
                if bank:  # the bank replays the buffered draws at every strength: fresh ones go into the buffer
                    newest.draws = trained_draws if e == 0 else policy.sample_params(newest.inputs, newest.target)
                core.augment_hypergrad = "head"
                with Clock() as c:
                    head = core.hypergradient(pipeline, step=trainer.state.step)
                clocks["head"].append(c)
                core.augment_hypergrad = "backbone"
                with Clock() as c:
                    both = core.hypergradient(pipeline, step=trainer.state.step, backbone_step=lr * cfg0.interval)
                clocks["backbone"].append(c)
                est["head"].append([g.detach() for g in head[n_loss:]])
                est["backbone"].append([(b - h).detach() for h, b in zip(head[n_loss:], both[n_loss:], strict=True)])

            newest.draws = trained_draws
            buffer = list(recorder.batches)
            val = p.val_batches(None)
            engine = UnrolledEngine(steps=cfg0.interval)
            for d in range(args.draws):
                order = torch.randperm(len(buffer), generator=torch.Generator().manual_seed(base + 100 + d)).tolist()
                batches = [(buffer[i][0], buffer[i][1]) for i in order[: cfg0.interval]]
                torch.manual_seed(base + 100 + d)
                if bank:
                    batches = [bank_batch(p, policy, core, x, y) for x, y in batches]
                problem = ModelProblem(trainer.model, trainer.loss, core.objective, core.hparams.all, batches, val,
                                       bank_forward(trainer.model) if bank else
                                       lambda x, y, m=None: p.train_logits(x, y, None, m), val_forward,
                                       cfg0.weight_decay, trainer.optimizer)
                with Clock() as c:
                    grads = engine(problem)
                clocks["reference"].append(c)
                ref.append([g.detach() for g in grads[n_loss:]])
        finally:
            core.augment_hypergrad = own
            newest.draws = trained_draws
    after = snapshot(trainer)
    if len(after) != len(before) or not all(torch.equal(a, b) for a, b in zip(before, after, strict=True)):
        raise RuntimeError("the measurement changed the run's state")

    reference = mean_of(ref)
    half = len(ref) // 2
    row: dict[str, Any] = {
        "state": index, "step": trainer.state.step, "epoch": trainer.state.epoch,
        "hyper_steps": trainer.state.hyper_steps,
        "lr": trainer.optimizer.param_groups[0]["lr"],
        "reference_norm": float(torch.cat([g.reshape(-1) for g in reference]).norm()),
        "noise_floor": compare(mean_of(ref[:half]), mean_of(ref[half:])) if half else None,
    }
    for kind in ("cpu", "wall"):
        head, bb, rf = ([getattr(c, kind) for c in clocks[k]] for k in ("head", "backbone", "reference"))
        row[f"{kind}_seconds"] = {"head": statistics.mean(head), "backbone_term": statistics.mean(bb),
                                  "head+backbone": statistics.mean(head) + statistics.mean(bb),
                                  "reference_per_draw": statistics.mean(rf), "reference": sum(rf)}
    draws = {"head": est["head"],
             "head+backbone": [[h + b for h, b in zip(hs, bs, strict=True)]
                               for hs, bs in zip(est["head"], est["backbone"], strict=True)]}
    for name in ESTIMATES:
        single = [compare(g, reference) for g in draws[name]]
        row[name] = {part: {k: statistics.mean(s[part][k] for s in single) for k in ("cos", "rel_norm", "sign")}
                     for part in PARTS}
        for part in PARTS:
            row[name][part]["cos_of_mean"] = compare(mean_of(draws[name]), reference)[part]["cos"]
    # how large the added term is beside the head engine's, and whether it points along it
    row["backbone_vs_head"] = compare(mean_of(est["backbone"]), mean_of(est["head"]))["all"]
    return row


def bank_batch(p, policy, core, x, y) -> tuple:
    """A training batch of the reference for ``--augment bank``: every image at every strength of the bank under
    one fresh draw (``[K * B, ...]`` model inputs) and the targets that weight the rows by the mixture (a graph
    to A), so that each unrolled step descends the expected loss over the bank."""
    import torch

    draws = policy.sample_params(x, y)
    with torch.no_grad():
        inputs = torch.cat([p.train_input(x, y, d) for d in policy.bank_draws(draws)])
    return inputs, core._bank_targets(y)


def bank_forward(model):
    """The reference's training forward of :func:`bank_batch`'s inputs (already augmented and normalised)."""
    from ab_plugin.bilevel import full_precision

    return lambda x, y, m=None: full_precision((m if m is not None else model)(x))


class Probe(TrainerCallback):
    """Trainer callback: measures at ``states`` hyper-steps spread evenly through the upper phase."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.rows, self.count, self.at, self.recorder = args, [], 0, None, None

    def on_epoch_start(self, trainer, epoch: int) -> None:
        if self.recorder is None:
            self.recorder = Recorder(trainer, trainer.cfg.hyper_batches)

    def on_hyper_step(self, trainer, step: int, norm, skipped: bool) -> None:
        if self.at is None:
            cfg, spe = trainer.cfg, trainer.steps_per_epoch
            total = sum(1 for s in range(trainer.upper_start_epoch * spe + 1, cfg.epochs * spe + 1)
                        if s % cfg.interval == 0)
            n = min(self.args.states, total)
            self.at = sorted({max(1, math.ceil((j + 0.5) * total / n)) for j in range(n)})
        self.count += 1
        if self.count in self.at:
            self.rows.append(measure(trainer, self.recorder, self.args, len(self.rows)))
            r = self.rows[-1]
            print(f"state {len(self.rows)}/{len(self.at)} (step {r['step']}): cos head {r['head']['all']['cos']:.3f}, "
                  f"head+backbone {r['head+backbone']['all']['cos']:.3f}, "
                  f"reference {r['cpu_seconds']['reference']:.0f} CPU s", file=sys.stderr, flush=True)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def avg(get) -> float:
        vals = [get(r) for r in rows]
        vals = [v for v in vals if v is not None and math.isfinite(v)]
        return statistics.mean(vals) if vals else math.nan

    out: dict[str, Any] = {name: {part: {k: avg(lambda r, n=name, p=part, k=k: r[n][p][k])
                                         for k in ("cos", "cos_of_mean", "rel_norm", "sign")} for part in PARTS}
                           for name in ESTIMATES}
    out["noise_floor"] = {part: avg(lambda r, p=part: r["noise_floor"][p]["cos"] if r["noise_floor"] else None)
                          for part in PARTS}
    for kind in ("cpu_seconds", "wall_seconds"):
        out[kind] = {k: avg(lambda r, k=k, kind=kind: r[kind][k]) for k in rows[0][kind]}
    out["backbone_vs_head"] = {k: avg(lambda r, k=k: r["backbone_vs_head"][k]) for k in ("cos", "rel_norm")}
    return out


def table(result: dict[str, Any]) -> str:
    f = "{:.3f}".format
    lines = ["| state (step) | cos head | cos head+bb | cos of mean head | cos of mean head+bb | ref noise floor | "
             "norm head/ref | norm head+bb/ref | sign head | sign head+bb |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def line(label: str, r: dict[str, Any], floor: float) -> str:
        h, b = r["head"]["all"], r["head+backbone"]["all"]
        return (f"| {label} | {f(h['cos'])} | {f(b['cos'])} | {f(h['cos_of_mean'])} | {f(b['cos_of_mean'])} | "
                f"{f(floor)} | {f(h['rel_norm'])} | {f(b['rel_norm'])} | {f(h['sign'])} | {f(b['sign'])} |")

    for r in result["states"]:
        floor = r["noise_floor"]["all"]["cos"] if r["noise_floor"] else math.nan
        lines.append(line(f"{r['state'] + 1} ({r['step']})", r, floor))
    s = result["summary"]
    lines.append(line("**mean**", s, s["noise_floor"]["all"]))
    lines += ["", "| mean cosine with the reference | all | probability logits | magnitude logits |",
              "|---|---|---|---|"]
    for name in ESTIMATES:
        for k in ("cos", "cos_of_mean"):
            lines.append(f"| {name} ({k}) | " + " | ".join(f(s[name][p][k]) for p in PARTS) + " |")
    lines.append("| reference noise floor | " + " | ".join(f(s["noise_floor"][p]) for p in PARTS) + " |")
    lines += ["", "| seconds per hyper-step (mean) | head | backbone term | head+backbone | reference (1 draw) | "
              f"reference ({result['args']['draws']} draws) |", "|---|---|---|---|---|---|"]
    for kind in ("cpu", "wall"):
        sec = s[f"{kind}_seconds"]
        lines.append(f"| {kind} | {sec['head']:.2f} | {sec['backbone_term']:.2f} | {sec['head+backbone']:.2f} | "
                     f"{sec['reference_per_draw']:.2f} | {sec['reference']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--backbone", default="resnet20")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-max", type=int, default=None, help="training images of the largest class (digits: 144)")
    p.add_argument("--interval", type=int, default=5, help="lower steps per hyper-step = the reference's unroll K")
    p.add_argument("--upper-start", type=float, default=0.4)
    p.add_argument("--states", type=int, default=4, help="hyper-steps measured, spread through the upper phase")
    p.add_argument("--draws", type=int, default=8, help="draws averaged into the reference")
    p.add_argument("--estimate-draws", type=int, default=4, help="draws of each estimate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--augment", default="learned", choices=("learned", "bank"),
                   help="the per-class policy measured: op probabilities and magnitudes, or a strength bank's "
                        "mixture (then the 'probability' part is the mixture logits and 'magnitude' is empty)")
    args = p.parse_args(argv)

    import torch

    from ab_plugin import AutoBalance, Config
    from ab_plugin.data import create_dataset

    torch.set_num_threads(args.threads)
    cfg = Config(dataset="digits-lt", backbone=args.backbone, epochs=args.epochs, batch_size=args.batch_size,
                 interval=args.interval, upper_start=args.upper_start, augment=args.augment, engine="head",
                 augment_hypergrad="backbone", n_max=args.n_max, seed=args.seed, device="cpu", workers=0)
    bundle = create_dataset("digits-lt", imbalance=cfg.imbalance, profile=cfg.profile, n_max=cfg.n_max)
    probe = Probe(args)
    with Clock() as total:
        search = AutoBalance(cfg).fit(bundle, callbacks=[probe])
    if not probe.rows:
        raise SystemExit("no hyper-step was measured: give the search more epochs or a smaller --interval")
    result = {
        "benchmark": "policy_hypergrad", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(), "revision": revision(), "load_average": os.getloadavg()[0],
        "args": vars(args), "config": cfg.to_dict(),
        "search": {"wall_seconds": total.wall, "cpu_seconds": total.cpu, "hyper_steps": search.hyper_steps,
                   "val_balanced_error": search.val_metrics["balanced_error"]},
        "states": probe.rows, "summary": summarize(probe.rows),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, allow_nan=True))
    print(table(result))
    return result


if __name__ == "__main__":
    main()
