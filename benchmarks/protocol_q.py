"""Protocol Q (../shared/BENCHMARKS.md): CIFAR-10-LT (rho 100, n_max 1000), ResNet-32, 50 epochs.

Every method trains with the same recipe; AutoBalance searches on an 80/20 split with the same epoch
budget, then retrains on the whole training set. Jobs (method x seed) run in worker processes and
append one JSON line each to ``--out``; finished jobs are skipped on a re-run, so the script resumes.

    python benchmarks/protocol_q.py --data ../shared/data/cifar10-jpg.zip --seeds 0,1,2 --workers 1
    python benchmarks/protocol_q.py --table benchmarks/results/q.jsonl      # markdown table

``--quick`` shrinks everything (a few iterations) so the test suite can run the script.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

BASELINES = ["ce", "la", "ldam-drw", "cdt", "vs"]
#: Bag of Tricks (Zhang et al., AAAI 2021) on CIFAR-10-LT: its best combination is input mixup, DRW and
#: balanced softmax. BagofTricks-LT's configs give α = 1.0 (configs/cao_cifar/mixup/input_mixup/
#: cifar10_im100_im_alpha10.yaml: COMBINER mix_up, ALPHA 1.0) and DRW from epoch 160 of 200
#: (two_stage/drw/bsce/cifar10_im100.yaml: BalancedSoftmaxCE, START_EPOCH 160, MAX_EPOCH 200), so 0.8 of the
#: epochs here. Their DRW of balanced softmax is a switch (lib/loss/loss_impl/balanced_softmax_cross_entropy_loss.py,
#: ``update``: the log n_c shift is all ones, i.e. plain CE, until START_EPOCH), not class-balanced weights on
#: top of it: ``rebalance_from``. Balanced softmax is la with τ = 1 (tests/losses/test_parametric.py).
#: ``bs-mixup`` is their balanced softmax with mixup throughout (no deferral); ``ce-mixup-drw`` is LDAM-DRW's
#: deferred class-balanced re-weighting of CE, with mixup. Each rival: the loss, then its Config changes.
MIXUP = {"mixup": 1.0}
RIVALS = {
    "bs-mixup": ("la", {"tau": 1.0, **MIXUP}),
    "bs-mixup-drw": ("la", {"tau": 1.0, **MIXUP, "rebalance_from": 0.8}),
    "ce-mixup-drw": ("ce", {**MIXUP, "drw_from": 0.8}),
}
AUTOBALANCE = {
    "ab-l": {"init": "neutral", "learn": ("logit_bias",)},
    "ab-delta": {"init": "neutral", "learn": ("logit_scale",)},
    "ab-dl": {"init": "neutral", "learn": ("logit_bias", "logit_scale")},
    "ab-dl-la": {"init": "la", "learn": ("logit_bias", "logit_scale")},
    "ab-dl-generic": {"init": "la", "learn": ("logit_bias", "logit_scale"), "augment": "generic"},
    "ab-dl-aug": {"init": "la", "learn": ("logit_bias", "logit_scale"), "augment": "learned"},
    "ab-tau": {"init": "la", "learn": ("tau",)},
    # the default search with the rivals' mixup, for the search and the retrain alike (the search learns the
    # re-balancing itself, so it takes no deferral)
    "ab-dl-la-mixup": {"init": "la", "learn": ("logit_bias", "logit_scale"), **MIXUP},
    # the default search while CUDA's curriculum drives the augmentation (issue 24's "CUDA + learned loss";
    # CUDA on a fixed loss is the baseline ``la@augment=cuda``)
    "ab-dl-la-cuda": {"init": "la", "learn": ("logit_bias", "logit_scale"), "augment": "cuda"},
    # the augmentation bank (issue 24's new PDA), from near strength 0 or from CUDA's levels at the upper start
    "ab-dl-bank": {"init": "la", "learn": ("logit_bias", "logit_scale"), "augment": "bank"},
    "ab-dl-bank-warm": {"init": "la", "learn": ("logit_bias", "logit_scale"), "augment": "bank",
                        "augment_warm_start": True},
    # issue 23's exact stage-2 search: stage 1 trains the backbone with LA (α's init), then α is learned on
    # its frozen features with the classifier solved exactly; the retrain repeats stage 1 and solves for α*
    "ab-dl-stage2": {"init": "la", "learn": ("logit_bias", "logit_scale"), "stage2": "search"},
}
#: issue 23's warm start (item 4): an Optuna study of this many short proxy searches (a sixth of the epochs,
#: median-pruned per epoch, ``ab-plugin search --warmstart N --warmstart-recipe-knobs``) over the init, the
#: upper lr, the validation fraction and the recipe (weight decay, DRW point, stage 2) chooses where the default
#: search starts and what recipe it and its retrain train with; only validation data scores the trials
#: (``ab-ws``: from the one-stage search; ``ab-ws-stage2``: from the product's default, the exact stage-2 search)
WARMSTART_TRIALS = {"ab-ws": 8, "ab-ws-stage2": 8}
AUTOBALANCE["ab-ws"] = AUTOBALANCE["ab-dl-la"]
AUTOBALANCE["ab-ws-stage2"] = AUTOBALANCE["ab-dl-stage2"]
# every row but ab-dl-stage2 is the one-stage search (hyper-steps in the training loop), as its raw rows were
# measured before Config's stage2 default became "auto" (the exact stage-2 search where it can serve)
for _ab in AUTOBALANCE.values():
    _ab.setdefault("stage2", "none")
METHODS = BASELINES + list(RIVALS) + list(AUTOBALANCE)


@dataclass(frozen=True)
class Protocol:
    """A benchmark protocol: data size, training recipe, AutoBalance upper-level settings and methods.

    The hooks (module-level functions, so that the spawned job processes can unpickle them) let a protocol
    change what Q does by default:

    - ``bundle(args)``: a job's data (default: the long-tailed ImageFolder tree or zip ``args["data"]``).
    - ``prepare(args)``: runs once before the jobs; returns the job arguments to use (the protocol's exact
      settings are judged before it) and a dict of provenance for the meta row.
    - ``table(path, methods)``: the markdown table of a results file.
    - ``job_args``: more job arguments (protocol F: the pretraining settings); ``quick``: changes to the job
      arguments under ``--quick``, after Q's own.
    - ``cache``: default of ``--cache``, a folder for what the protocol computes once and reuses (F: the
      pretrained checkpoint); ``None``: no such option.
    """

    name: str
    n_max: int
    recipe: dict[str, Any]
    methods: tuple[str, ...]
    out: str
    upper: dict[str, Any] = field(default_factory=dict)
    imbalance: float = 100.0
    bundle: Callable[[dict[str, Any]], Any] | None = None
    prepare: Callable[[dict[str, Any]], tuple[dict[str, Any], dict[str, Any]]] | None = None
    table: Callable[[Path, tuple[str, ...]], str] | None = None
    job_args: dict[str, Any] = field(default_factory=dict)
    quick: dict[str, Any] = field(default_factory=dict)
    cache: str | None = None


Q = Protocol(
    name="Q",
    n_max=1000,
    recipe=dict(backbone="resnet32", epochs=50, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4,
                warmup_epochs=5, schedule="cosine", augment="fixed"),
    methods=tuple(METHODS),
    out="q.jsonl",
)
QUICK_RECIPE = dict(epochs=2, batch_size=32, warmup_epochs=1, backbone="resnet20")
QUICK_N_MAX = 200


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return f"{cpu}, {os.cpu_count()} cores" + (f", GPU {gpu}" if gpu else "")


def revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_job(method: str, seed: int, args: dict[str, Any]) -> dict[str, Any]:
    import torch

    from ab_plugin import AutoBalance, Config, retrain, train_baseline
    from ab_plugin.data import create_dataset

    torch.set_num_threads(args["threads"])
    if args.get("bundle"):
        bundle = args["bundle"](args)
    else:
        bundle = create_dataset(f"imagefolder:{args['data']}", imbalance=args["imbalance"], n_max=args["n_max"])
    if args.get("test_per_class"):  # smoke runs: a small balanced slice of the test set
        keep = torch.cat([torch.nonzero(bundle.test.targets == c).flatten()[: args["test_per_class"]]
                          for c in range(bundle.test.num_classes)])
        bundle.test = bundle.test.subset(keep)
    base = dict(args["recipe"], dataset="cifar10-lt-q", seed=seed, device=args["device"], amp=args["amp"])
    t0 = time.perf_counter()
    out: dict[str, Any] = {"method": method, "seed": seed, "train_images": len(bundle.train)}
    method, overrides = parse_method(method)
    if method in BASELINES or method in RIVALS:
        loss, recipe = RIVALS.get(method, (method, {}))
        res = train_baseline(loss, bundle, _cfg(Config, base, loss=loss, **{**recipe, **overrides}))
        out["train_seconds"] = res.seconds
    else:
        ab = AUTOBALANCE[method]
        cfg = _cfg(Config, base, **{**ab, **args.get("upper", {}), **overrides})
        if method in WARMSTART_TRIALS:
            cfg, out["warmstart"] = _warm_start(cfg, bundle, WARMSTART_TRIALS[method])
        searcher = AutoBalance(cfg)
        search = searcher.fit(bundle)
        res = retrain(search, bundle, cfg)
        assert searcher.trainer is not None
        out.update(search_seconds=search.seconds, train_seconds=res.seconds, hyper_steps=search.hyper_steps,
                   search_images=len(searcher.trainer.train_data),
                   alpha=search.alpha, search_val=search.val_metrics, augmentation=search.augmentation,
                   sharing=cfg.sharing)
        if search.stage2:  # the exact stage-2 search: its hyper-steps' own seconds, apart from stage 1's training
            out["search_stage2"] = search.stage2
    m = res.test_metrics
    if res.stage2:  # what stage 2 chose, and the stage-1 model's error on the same backbone (its paired effect)
        out.update(stage2=res.stage2, stage1_balanced_error=100 * res.stage1_test_metrics["balanced_error"])
    out.update(balanced_error=100 * m["balanced_error"], worst_class_error=100 * m["worst_class_error"],
               per_class_error=[100 * e for e in m["per_class_error"]], accuracy=100 * m["accuracy"],
               wall_seconds=time.perf_counter() - t0)
    return out


def _warm_start(cfg: Any, bundle: Any, n_trials: int) -> tuple[Any, dict[str, Any]]:
    """``cfg`` from the best of an ``n_trials`` warm-start study over the recipe knobs too, and what it cost."""
    import tempfile

    from ab_plugin.warmstart import warmstart_config
    from ab_plugin.warmstart.space import RecipeSpace, SearchSpace

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # the search --warmstart N --warmstart-recipe-knobs space
        chosen = warmstart_config(cfg, str(n_trials), storage=None, out=Path(tmp), bundle=bundle,
                                  space=SearchSpace(recipe=RecipeSpace()))
    before = cfg.to_dict()
    changed = {k: v for k, v in chosen.to_dict().items() if v != before.get(k)}
    return chosen, {"trials": n_trials, "seconds": time.perf_counter() - t0, "chosen": changed}


def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``ab-dl-la@upper_lr=0.03,interval=10`` -> ("ab-dl-la", {"upper_lr": 0.03, "interval": 10}): Config
    overrides of one method (baselines take them too: ``la@freeze_backbone=true``)."""
    name, _, rest = spec.partition("@")
    overrides: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:  # numbers, booleans, lists; anything else is a string (``stage2=tau-norm``)
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return name, overrides


def split_methods(text: str) -> list[str]:
    """``la,ce@weight_decay=0.002,stage2=wb`` -> ["la", "ce@weight_decay=0.002,stage2=wb"]: a comma starts a
    new method unless what follows it is another ``key=value`` override."""
    return [m.strip() for m in re.split(r",(?=[^,=@]*(?:@|,|$))", text) if m.strip()]


def _cfg(config_cls: Any, base: dict[str, Any], **changes: Any) -> Any:
    d = {**base, **changes}
    d.pop("dataset", None)
    return config_cls(dataset="imagefolder", **d)


def _worker(job: tuple[str, int, dict[str, Any]]) -> dict[str, Any]:
    method, seed, args = job
    try:
        return run_job(method, seed, args)
    except Exception as e:  # a failed job is recorded, the others go on
        return {"method": method, "seed": seed, "error": f"{type(e).__name__}: {e}"}


def finished_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of finished jobs (failed jobs and a torn last line are left out)."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "error" not in r:
            rows.append(r)
    return rows


def done_jobs(path: Path) -> set[tuple[str, int]]:
    return {(r["method"], r["seed"]) for r in finished_rows(path)}


def table(path: Path, methods: tuple[str, ...] = tuple(METHODS)) -> str:
    rows: dict[str, list[dict[str, Any]]] = {}
    for r in finished_rows(path):
        rows.setdefault(r["method"], []).append(r)

    def ms(vals: list[float]) -> str:
        if len(vals) == 1:
            return f"{vals[0]:.2f}"
        return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"

    lines = ["| method | seeds | balanced error % | worst-class error % | train s | search s |",
             "|---|---|---|---|---|---|"]
    for m in list(methods) + sorted(set(rows) - set(methods)):
        if m not in rows:
            lines.append(f"| {m} | – | not run | not run | not run | not run |")
            continue
        rs = rows[m]
        search = [r["search_seconds"] for r in rs if "search_seconds" in r]
        lines.append(f"| {m} | {len(rs)} | {ms([r['balanced_error'] for r in rs])} | "
                     f"{ms([r['worst_class_error'] for r in rs])} | {ms([r['train_seconds'] for r in rs])} | "
                     f"{ms(search) if search else '–'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None, protocol: Protocol = Q, doc: str | None = __doc__) -> int:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpg.zip"))
    p.add_argument("--methods", default="all", help="comma list or 'all': " + ",".join(protocol.methods))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--workers", type=int, default=1, help="parallel jobs (processes)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per job [default: cores / workers]")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--n-max", type=int, default=protocol.n_max)
    p.add_argument("--imbalance", type=float, default=protocol.imbalance,
                   help=f"largest over smallest class count [default: {protocol.imbalance:g}]")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"override the {protocol.recipe['epochs']} epochs (not protocol {protocol.name} then)")
    p.add_argument("--upper", default="{}", help="JSON dict of Config overrides for the AutoBalance rows")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / protocol.out))
    p.add_argument("--quick", action="store_true", help="tiny smoke version (seconds)")
    if protocol.cache:
        p.add_argument("--cache", default=protocol.cache, help="folder of what the protocol computes once and "
                       f"reuses, outside the repository [default: {protocol.cache}]")
    p.add_argument("--table", default=None, help="print the markdown table of a results file and exit")
    a = p.parse_args(argv)
    show = protocol.table or table
    if a.table:
        print(show(Path(a.table), protocol.methods))
        return 0
    if not Path(a.data).exists():
        print(f"error: {a.data} not found: pass --data pointing at cifar10-jpg.zip", file=sys.stderr)
        return 2
    methods = list(protocol.methods) if a.methods == "all" else split_methods(a.methods)
    unknown = sorted({parse_method(m)[0] for m in methods} - set(METHODS))
    if unknown:
        print(f"error: unknown methods {unknown}: choose from {METHODS}", file=sys.stderr)
        return 2
    try:
        extra = json.loads(a.upper)
    except json.JSONDecodeError:
        extra = None
    if not isinstance(extra, dict):
        print(f"error: --upper {a.upper!r} is not a JSON object: pass e.g. '{{\"engine\": \"head\"}}'", file=sys.stderr)
        return 2
    base_upper = dict(protocol.upper)
    if "engine" in extra and "engine_options" not in extra:  # the protocol's options belong to its engine
        base_upper.pop("engine_options", None)
    upper = {**base_upper, **extra}
    seeds = [int(s) for s in a.seeds.split(",")]
    recipe = dict(protocol.recipe)
    if a.epochs:
        recipe["epochs"] = a.epochs
    n_max = a.n_max
    if a.quick:
        recipe.update(QUICK_RECIPE)
        n_max = QUICK_N_MAX
    args = {"data": a.data, "n_max": n_max, "imbalance": a.imbalance, "device": a.device, "amp": a.amp,
            "recipe": recipe, "upper": upper, "test_per_class": 20 if a.quick else 0,
            "threads": a.threads or max(1, (os.cpu_count() or 2) // a.workers), "bundle": protocol.bundle,
            "cache": getattr(a, "cache", None), **protocol.job_args}
    if a.quick:
        args.update(protocol.quick)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    skip = done_jobs(out)
    exact = (args["recipe"] == protocol.recipe and args["n_max"] == protocol.n_max
             and a.imbalance == protocol.imbalance and upper == protocol.upper)
    provenance: dict[str, Any] = {}
    if protocol.prepare:
        args, provenance = protocol.prepare(args)
    jobs = [(m, s, args) for s in seeds for m in methods if (m, s) not in skip]
    header = {"protocol": protocol.name if exact else f"{protocol.name}-modified",
              "machine": machine(), "date": date.today().isoformat(), "revision": revision(),
              "command": " ".join([sys.executable, *sys.argv]), "recipe": args["recipe"], "upper": upper,
              "n_max": args["n_max"], "imbalance": a.imbalance, **provenance}
    with open(out.with_suffix(".meta.jsonl"), "a") as f:
        f.write(json.dumps(header) + "\n")
    ctx = mp.get_context("spawn")
    with ctx.Pool(a.workers) as pool:
        for r in pool.imap_unordered(_worker, jobs):
            with open(out, "a") as f:
                f.write(json.dumps(r) + "\n")
            status = r.get("error") or f"balanced error {r['balanced_error']:.2f}%"
            print(f"{r['method']:>10} seed {r['seed']}: {status}", flush=True)
    print(show(out, protocol.methods))
    return 0


if __name__ == "__main__":
    sys.exit(main())
