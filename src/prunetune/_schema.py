"""The trial-config schema, declared once: training options, losses, built-in model families.

Study specs (their ranges), the Optuna space, ``prunetune train``'s options, trial validation
and :class:`prunetune.prune.TrainConfig` all read these tables. Imports nothing heavy (no torch),
so the CLI builds its ``--help`` from them.

Example:
    >>> from prunetune._schema import TRAIN
    >>> TRAIN["lr"].default, TRAIN["optimizer"].choices
    (0.001, ('adam', 'adamw', 'sgd'))
"""

from __future__ import annotations

from typing import Any

from prunetune._hparams import Choice, Float, Int, Many, Param

#: Every training option of a trial, with the values it accepts and its default.
TRAIN: dict[str, Param] = {
    "epochs": Int(1, 10_000, 10, help="passes over the training split"),
    "batch_size": Int(1, 1 << 16, 128, help="samples per optimiser step"),
    "lr": Float(1e-6, 10.0, 1e-3, log=True, help="learning rate of the weights"),
    "optimizer": Choice(("adam", "adamw", "sgd"), "adam", help="optimiser"),
    "weight_decay": Float(0.0, 1.0, 0.0, help="L2 / decoupled weight decay (never on masks)"),
    "momentum": Float(0.0, 0.999, 0.9, help="SGD momentum"),
    "seed": Int(0, 2**31 - 1, 0, help="seeds weights, shuffling and mask noise"),
    "loss": Choice(
        ("auto", "cross_entropy", "mse", "l1"),
        "auto",
        help="auto: cross_entropy (classification) or mse (regression)",
    ),
    "augment": Many(
        ("crop", "flip"),
        (),
        help="train-time image augmentation on the trial's device: crop (4-pixel padding), flip",
    ),
    "num_workers": Int(
        0, 256, 0, help="DataLoader worker processes (data factories returning Datasets)"
    ),
    "lr_schedule": Choice(
        ("constant", "cosine"),
        "constant",
        help="learning rate of the weights over each phase: constant, or cosine decay to 0",
    ),
    "finetune_epochs": Int(
        0,
        10_000,
        0,
        help="epochs of a fine-tune phase after training, with the masks frozen at their hard "
        "values (0: none)",
    ),
    "finetune_lr": Float(
        1e-6, 10.0, 1e-3, log=True, help="learning rate of the weights in the fine-tune phase"
    ),
}

#: ``train.distill``: knowledge distillation from a dense teacher (Hinton et al. 2015). The
#: loss is ``(1 - alpha) * loss(student, y) + alpha * T² * KL(teacher_T || student_T)``.
DISTILL: dict[str, Param] = {
    "alpha": Float(0.0, 1.0, 0.0, help="weight of the teacher's soft targets (0: off)"),
    "temperature": Float(1.0, 50.0, 4.0, help="softmax temperature T of teacher and student"),
    "teacher_epochs": Int(1, 10_000, 10, help="epochs the dense teacher trains (once per study)"),
}
#: Distillation options a study spec may search.
DISTILL_SEARCHABLE: tuple[str, ...] = ("alpha", "temperature")

#: Options a study spec may search (a range or a list of choices); the others take one value.
SEARCHABLE: tuple[str, ...] = (
    "lr",
    "batch_size",
    "optimizer",
    "weight_decay",
    "momentum",
    "lr_schedule",
    "finetune_epochs",
    "finetune_lr",
)
#: How a trial runs, not what it computes: left out of a study's fingerprint.
RUN_SETTINGS: tuple[str, ...] = ("num_workers",)
#: Options added after the first studies: at their defaults they leave a fingerprint unchanged,
#: so those studies still resume.
ADDED_LATER: tuple[str, ...] = (
    "loss",
    "momentum",
    "augment",
    "num_workers",
    "lr_schedule",
    "finetune_epochs",
    "finetune_lr",
)

#: Losses by task; ``auto`` picks the first.
LOSSES_OF_TASK: dict[str, tuple[str, ...]] = {
    "classification": ("cross_entropy",),
    "regression": ("mse", "l1"),
}
#: The study's first objective by task.
METRIC_OF_TASK: dict[str, str] = {"classification": "val_accuracy", "regression": "val_loss"}

#: Built-in model families (``prunetune.models.build_family``) and their activations.
FAMILIES: tuple[str, ...] = ("mlp", "lenet5", "cnn", "resnet")
ACTIVATIONS: tuple[str, ...] = ("relu", "silu", "tanh", "gelu")
RESNET_DEPTHS: tuple[int, ...] = (8, 14, 20, 32)


def check_train(values: dict[str, Any], where: str = "train") -> dict[str, Any]:
    """``values`` checked against :data:`TRAIN` with the defaults filled in.

    Raises:
        ValueError: an unknown option or a bad value, naming ``where.option`` and the value.
    """
    from prunetune._hparams import validate_config

    return validate_config(TRAIN, values, where=where)


def resolve_loss(loss: str, task: str, dataset: str) -> str:
    """``train.loss`` for a data set's task (``auto``: cross entropy or MSE).

    Raises:
        ValueError: the loss does not fit the task.
    """
    allowed = LOSSES_OF_TASK[task]
    if loss == "auto":
        return allowed[0]
    if loss not in allowed:
        raise ValueError(
            f"train.loss {loss!r} does not fit dataset {dataset} ({task}); use one of "
            f"{['auto', *allowed]}"
        )
    return loss


__all__ = [
    "ACTIVATIONS",
    "ADDED_LATER",
    "DISTILL",
    "DISTILL_SEARCHABLE",
    "FAMILIES",
    "LOSSES_OF_TASK",
    "METRIC_OF_TASK",
    "RESNET_DEPTHS",
    "RUN_SETTINGS",
    "SEARCHABLE",
    "TRAIN",
    "check_train",
    "resolve_loss",
]
