"""A loop shaped like torchvision's classification reference, with AutoBalance's criterion and an exported
per-class augmentation policy.

    python examples/torchvision_loop.py                  # under two minutes on 2 idle CPU cores
    python examples/torchvision_loop.py --quick          # a few seconds (smoke test)
    python examples/torchvision_loop.py --policy runs/search/policy.json --out policy.json

Changes against ``references/classification/train.py``: ``criterion = AutoBalanceCriterion(...).attach(model,
val_loader)`` instead of ``nn.CrossEntropyLoss``, and the training transform applies the policy of each
sample's class (``PerClassTransformV2`` in a ``transforms.v2`` pipeline over whole ``(image, label)`` samples;
``--batched-policy`` applies it per batch in the ``collate_fn`` with ``PerClassTransform`` instead). MixUp /
CutMix come from ``transforms.v2`` in the ``collate_fn``, as in the reference; their soft targets go straight
into the criterion. Without ``--policy`` a demonstration policy is written (stronger augmentation for rarer
classes). ``--out`` exports the learned α with the augmentation as a policy file. Data: ``digits-lt``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms import v2

from ab_plugin.data import create_dataset, split_per_class
from ab_plugin.integrations import (
    AutoBalanceCriterion,
    PerClassCollate,
    SampleTransformDataset,
    evaluate,
    train_one_epoch,
)
from ab_plugin.policies import (
    FORMAT_VERSION,
    ClassPolicy,
    PerClassTransform,
    PerClassTransformV2,
    PolicyFile,
    load_policy,
    policy_from_module,
    save_policy,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="1 epoch of 2 small steps (smoke test)")
    p.add_argument("--model", default="resnet18", help="a torchvision model name (torchvision.models.get_model)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--policy", type=Path, default=None, help="a policy file (default: a demonstration policy)")
    p.add_argument("--batched-policy", action="store_true", help="apply the policy per batch in the collate_fn")
    p.add_argument("--mix", action="store_true", default=True, help="MixUp / CutMix in the collate_fn (default)")
    p.add_argument("--no-mix", dest="mix", action="store_false")
    p.add_argument("--interval", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="export the learned α (+ augmentation) here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def demo_policy(path: Path, classes: list[str], counts: list[int]) -> Path:
    """Write a policy file whose augmentation grows stronger as classes get rarer."""
    policy = ClassPolicy(len(classes), ops=("translate", "rotate", "scale", "brightness", "contrast"),
                         learnable=False, crop_flip=False)
    n = torch.tensor(counts, dtype=torch.float64)
    rarity = 1.0 - n.log() / n.max().log()  # 0 for the largest class, 1 for a single-sample class
    per_class = policy.per_class()
    for op in per_class:
        per_class[op]["probability"] = [0.3 + 0.5 * float(r) for r in rarity]
        per_class[op]["magnitude"] = [0.2 + 0.5 * float(r) for r in rarity]
    policy.load_per_class(per_class)
    neutral = {"class_weight": [1.0] * len(classes), "logit_bias": [0.0] * len(classes),
               "logit_scale": [1.0] * len(classes)}
    save_policy(path, PolicyFile(FORMAT_VERSION, classes, counts, neutral, policy_from_module(policy),
                                 {"note": "demonstration policy of examples/torchvision_loop.py"}))
    return path


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    epochs, max_steps = (1, 2) if args.quick else (args.epochs, None)
    interval, batch_size = (1, 16) if args.quick else (args.interval, args.batch_size)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    t0 = time.perf_counter()

    bundle = create_dataset("digits-lt")
    train, val = split_per_class(bundle.train, val_fraction=0.2, seed=args.seed)
    test = bundle.test.subset(torch.arange(0, len(bundle.test), 5)) if args.quick else bundle.test
    classes, counts = bundle.classes, [int(c) for c in train.class_counts()]
    num_classes = len(classes)
    mean, std = list(bundle.mean), list(bundle.std)

    tmp = tempfile.TemporaryDirectory()
    policy_path = args.policy or demo_policy(Path(tmp.name) / "policy.json", classes, counts)
    policy_file = load_policy(policy_path)

    # data, reference style: datasets with transforms, MixUp / CutMix in the collate_fn
    to_input = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    mix = v2.RandomChoice([v2.MixUp(num_classes=num_classes), v2.CutMix(num_classes=num_classes)]) \
        if args.mix else None
    train_raw = TensorDataset(train.images, train.targets)
    if args.batched_policy:
        dataset_train = train_raw
        collate = PerClassCollate(PerClassTransform(policy_file), mean=mean, std=std, mix=mix)
    else:
        dataset_train = SampleTransformDataset(train_raw, transforms=v2.Compose([PerClassTransformV2(policy_file),
                                                                                 *to_input]))
        collate = PerClassCollate(mix=mix)
    eval_tf = v2.Compose(to_input)
    data_loader = DataLoader(dataset_train, batch_size=batch_size, shuffle=True, drop_last=True, collate_fn=collate)
    data_loader_val = DataLoader(SampleTransformDataset(TensorDataset(val.images, val.targets), eval_tf),
                                 batch_size=256)
    data_loader_test = DataLoader(SampleTransformDataset(TensorDataset(test.images, test.targets), eval_tf),
                                  batch_size=256)

    model = torchvision.models.get_model(args.model, num_classes=num_classes).to(device)
    # the integration: the criterion (split_model finds torchvision's `fc` / `classifier` head)
    criterion = AutoBalanceCriterion(counts, init="la", interval=interval, val_batches=None, upper_lr=0.05)
    criterion.attach(model, data_loader_val)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    lr_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    start = torch.tensor(criterion.alpha["logit_bias"])

    for epoch in range(epochs):
        stats = train_one_epoch(model, criterion, optimizer, data_loader, device, epoch, max_steps=max_steps)
        lr_scheduler.step()
        ev = evaluate(model, criterion, data_loader_test, device, num_classes)
        print(f"epoch {epoch + 1}/{epochs}: train loss {stats['loss']:.3f}  test acc1 {ev['acc1']:.1f}  "
              f"balanced error {ev['balanced_error']:.3f}  hyper-steps {criterion.hyper_steps}", flush=True)

    if args.out is not None:
        save_policy(args.out, PolicyFile(FORMAT_VERSION, classes, counts, criterion.alpha, policy_file.augmentation,
                                         {"dataset": "digits-lt", "backbone": args.model, "epochs": epochs}))
        print(f"wrote {args.out}")
    tmp.cleanup()
    moved = float((torch.tensor(criterion.alpha["logit_bias"]) - start).abs().max())
    seconds = time.perf_counter() - t0
    print(f"done: test balanced error {ev['balanced_error']:.3f}, hyper-steps {criterion.hyper_steps}, "
          f"alpha moved {moved:.4f}, {seconds:.1f}s")
    return {"balanced_error": ev["balanced_error"], "alpha_moved": moved, "seconds": seconds}


if __name__ == "__main__":
    main()
