"""
Train a tensorized student on the teacher-student task with Lightning's Trainer.

The teacher's 64x64 weight has planted TTM ranks (3, 3); the student is a Bayesian TTM layer
with max rank 6 whose rank scales are learned by SVI (:class:`tensorbayes.lightning.TensorBayesModule`).
The Trainer brings its callbacks, loggers and strategies unchanged, e.g. on several GPUs::

    python examples/lightning_teacher_student.py --epochs 20
    python examples/lightning_teacher_student.py --accelerator gpu --devices 4 --strategy ddp

(with DDP, ``--batch-size`` is per process). Needs ``pip install "tensorbayes[lightning]"``.
"""

import argparse

import lightning.pytorch as pl
import torch
from pyro.nn import PyroModule

import tensorbayes as tb
from tensorbayes.lightning import TensorBayesModule


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--devices", default=1)
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    pl.seed_everything(args.seed)
    task = tb.data.teacher_student(seed=args.seed)
    layer = tb.models.TensorizedLinear(
        64, 64, format="ttm", max_rank=6, in_shape=task.in_shape, out_shape=task.out_shape
    )
    model = tb.models.BayesianClassifier(PyroModule[torch.nn.Sequential](layer), task.num_classes)
    guide = tb.guides.MeanField(model, seed=args.seed)

    train = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(task.x_train, task.y_train), batch_size=args.batch_size, shuffle=True
    )
    test = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(task.x_test, task.y_test), batch_size=1024)
    module = TensorBayesModule(model, guide, num_data=len(task.x_train), lr=1e-2)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy,
        logger=False,
        enable_checkpointing=False,
    )
    trainer.fit(module, train, test)

    if trainer.is_global_zero:
        found = tb.ranks(model, guide)
        print(
            f"planted ranks {tuple(task.ranks)}, found {found}, "
            f"held-out accuracy {float(trainer.callback_metrics['val_accuracy']):.1%}"
        )
        tb.prune(model, guide)
        print(tb.compression_report(model))


if __name__ == "__main__":
    main()
