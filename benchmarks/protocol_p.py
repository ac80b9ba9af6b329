"""Protocol P (../shared/BENCHMARKS.md): full CIFAR-10-LT (rho 100, n_max 5000, 12,406 images), ResNet-32,
the AutoBalance reference schedule. Meant for a GPU.

300 epochs, lr 0.1 with 5 warm-up epochs and x0.1 at epochs 220 and 260, batch 128, weight decay 1e-4.
AutoBalance: upper level from epoch 120, a hyper-step every 20 iterations from 10 training and 10
validation batches, 5 Neumann terms, upper SGD lr 0.01 (momentum 0.9, weight decay 1e-4, 10 warm-up
epochs), search on the per-class 80/20 split (4000/1000 for the head class), then retrain 300 epochs
on train + validation with α* fixed. Same job runner, resume and output format as protocol Q.

    python benchmarks/protocol_p.py --device cuda --workers 4 --threads 2
    python benchmarks/protocol_p.py --upper '{"engine": "head", "interval": 5}'   # ab-plugin's engine
    python benchmarks/protocol_p.py --table benchmarks/results/p.jsonl

Paper's balanced errors (ResNet-32): CE 30.45, LA 23.13, CDT 20.73, AutoBalance Δ&l 21.39, Δ&l LA init 21.15.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol_q import Protocol, main  # noqa: E402

P = Protocol(
    name="P",
    n_max=5000,
    recipe=dict(backbone="resnet32", epochs=300, batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4,
                warmup_epochs=5, schedule="step", milestones=(220 / 300, 260 / 300), augment="fixed"),
    methods=("ce", "la", "cdt", "ab-dl", "ab-dl-la"),
    out="p.jsonl",
    upper=dict(engine="neumann", engine_options={"terms": 5, "step": 0.1}, upper_start=120 / 300, interval=20,
               hyper_batches=10, upper_optimizer="sgd", upper_lr=0.01, upper_momentum=0.9, upper_weight_decay=1e-4,
               upper_warmup_epochs=10),
)

if __name__ == "__main__":
    sys.exit(main(protocol=P, doc=__doc__))
