"""The smallest integration: a plain PyTorch loop whose criterion tunes itself.

    python examples/criterion_only.py              # under a minute on 2 idle CPU cores
    python examples/criterion_only.py --quick      # a few seconds (smoke test)

Your loop, your optimizer and your schedule stay as they are; the only change is the criterion:

    criterion = AutoBalanceCriterion(class_counts, init="la").attach(model, val_batches)
    loss = criterion(model(x), y)

Every ``--interval`` calls the criterion takes one hyper-step on α (logit bias and scale per class) with an
implicit hypergradient on the classifier (the ``head`` engine), using the classifier inputs of your own
forward passes and a no-grad pass over the validation batches. Data: the embedded ``digits-lt``
(scikit-learn digits, long-tailed, imbalance 100; no network).
"""

from __future__ import annotations

import argparse
import time

import timm
import torch

import ab_plugin  # noqa: F401  (registers resnet20_cifar ... resnet110_cifar in timm)
from ab_plugin.data import TensorLoader, create_dataset, normalize, random_crop_flip, split_per_class
from ab_plugin.integrations import AutoBalanceCriterion, evaluate_metrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--quick", action="store_true", help="1 epoch of 2 small steps (smoke test)")
    p.add_argument("--backbone", default="resnet20_cifar", help="any timm model name")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--interval", type=int, default=2, help="lower steps between hyper-steps")
    p.add_argument("--eval-every", type=int, default=4, help="test evaluation every N epochs (and at the end)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    epochs, max_steps = (1, 2) if args.quick else (args.epochs, None)
    interval, batch_size = (1, 16) if args.quick else (args.interval, args.batch_size)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    t0 = time.perf_counter()

    bundle = create_dataset("digits-lt")
    train, val = split_per_class(bundle.train, val_fraction=0.2, seed=args.seed)
    mean, std, num_classes = bundle.mean, bundle.std, bundle.num_classes

    def prepared(data):  # preprocessed (x, y) batches, the form the criterion wants for validation
        return [(normalize(x, mean, std), y) for x, y, _ in TensorLoader(data, 256, shuffle=False, device=device)]

    test = bundle.test.subset(torch.arange(0, len(bundle.test), 5)) if args.quick else bundle.test
    val_batches, test_batches = prepared(val), prepared(test)

    model = timm.create_model(args.backbone, num_classes=num_classes).to(device)
    loader = TensorLoader(train, batch_size, shuffle=True, drop_last=True, device=device, seed=args.seed)
    steps = epochs * (max_steps or len(loader))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)  # stepped per iteration

    # the integration: one line
    criterion = AutoBalanceCriterion(train.class_counts(), init="la", interval=interval, val_batches=None,
                                     upper_lr=0.05).attach(model, val_batches)
    start = torch.tensor(criterion.alpha["logit_bias"])

    for epoch in range(epochs):
        model.train()
        for step, (x, y, _) in enumerate(loader):
            if max_steps is not None and step >= max_steps:
                break
            x = normalize(random_crop_flip(x), mean, std)
            loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        bias = ", ".join(f"{v:+.2f}" for v in criterion.alpha["logit_bias"])
        line = f"epoch {epoch + 1}/{epochs}: loss {float(loss.detach()):.3f}  hyper-steps {criterion.hyper_steps}"
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == epochs:
            m = evaluate_metrics(model, test_batches, num_classes)
            line += f"  test balanced error {m.balanced_error:.3f}"
        print(f"{line}  logit bias [{bias}]", flush=True)

    moved = float((torch.tensor(criterion.alpha["logit_bias"]) - start).abs().max())
    seconds = time.perf_counter() - t0
    print(f"done: test balanced error {m.balanced_error:.3f}, accuracy {m.accuracy:.3f}, "
          f"hyper-steps {criterion.hyper_steps}, alpha moved {moved:.4f}, {seconds:.1f}s")
    return {"balanced_error": m.balanced_error, "alpha_moved": moved, "seconds": seconds}


if __name__ == "__main__":
    main()
