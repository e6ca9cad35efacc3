"""Knowledge distillation (Hinton et al. 2015): a student trained on labels and on a teacher run's outputs."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mnist_lit.errors import UserError
from mnist_lit.module import MNISTClassifier

log = logging.getLogger(__name__)


class DistillationClassifier(MNISTClassifier):
    """MNISTClassifier whose training loss mixes cross-entropy on the labels with the teacher's soft outputs:

        (1 - distill_weight) * CE(student, y)
            + distill_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))

    (T^2 keeps the soft term's gradients on the scale of the hard one's as T changes). The teacher is a
    trained run's folder, read by `load_teacher(run_dir=teacher)` (the config passes
    `mnist_lit.runs.checkpoint.load_run`: its own config and best checkpoint, weights only, nothing unpickled
    runs), which returns the run's `net` and its `datamodule` (built from its config, no data read): the
    student's data must be of the same shape and scaling. It sees the very batch the student trains on,
    augmentation included.

    The teacher is kept out of the module tree on purpose: it is not in `parameters()` (so not in the
    optimizer or the trainable-parameter count), not in the checkpoint's state_dict (which holds the student
    under `net.` only, so evaluate, predict and export load it as any MLP run), and Lightning's `.train()` at
    fit start and after every validation never reaches it, so it stays in eval mode (batch norm statistics,
    no dropout). Validation and test score the student alone.
    """

    def __init__(self, *args, teacher: str, load_teacher: Callable, temperature: float = 4.0,
                 distill_weight: float = 0.9, **kwargs):
        super().__init__(*args, **kwargs)
        if not temperature > 0:
            raise UserError(f"model.temperature={temperature} must be > 0, e.g. 4.")
        if not 0.0 <= distill_weight <= 1.0:
            raise UserError(f"model.distill_weight={distill_weight} must be in [0, 1] (0: labels only).")
        self.temperature, self.distill_weight = float(temperature), float(distill_weight)
        try:
            run = load_teacher(run_dir=teacher)
        except UserError as err:
            raise UserError(f"model.teacher={teacher}: {err}") from None
        self.teacher_data = run.datamodule  # the kind of inputs it was trained on
        for p in run.net.parameters():
            p.requires_grad_(False)
        object.__setattr__(self, "teacher", run.net.eval())  # not a submodule (see the class docstring)
        log.info("teacher: %s from %s (%d parameters, frozen)", type(run.net).__name__, run.checkpoint,
                 sum(p.numel() for p in run.net.parameters()))

    def setup(self, stage: str) -> None:
        super().setup(stage)
        data, teacher = getattr(self.trainer, "datamodule", None), self.teacher_data
        if data is None:
            return
        if (data.image_shape, data.num_classes) != (teacher.image_shape, teacher.num_classes):
            shape = "x".join(map(str, teacher.image_shape))
            raise UserError(
                f"model.teacher was trained on {teacher.name} ({shape} images, {teacher.num_classes} classes), "
                f"this run's data is {data.name} ({'x'.join(map(str, data.image_shape))} images, "
                f"{data.num_classes} classes): the teacher cannot read its digits. Pass a teacher trained on "
                f"this run's data, or train on the teacher's."
            )
        if data.normalization != teacher.normalization:
            raise UserError(
                f"model.teacher was trained with data.normalize={teacher.normalize}, this run has "
                f"data.normalize={data.normalize}: the teacher would see pixels scaled as it never was. Set "
                f"data.normalize={teacher.normalize}."
            )

    def on_fit_start(self) -> None:
        # Lightning has moved the module to its device by now, but not the teacher, which is not part of it
        self.teacher.to(self.device).eval()

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # not inference_mode: KL's backward keeps the (constant) teacher outputs
            return self.teacher(x)

    def training_loss(self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        hard = super().training_loss(logits, y, x)
        if self.distill_weight == 0:
            return hard  # exactly the plain loss; the teacher does not even run
        t = self.temperature
        soft = F.kl_div(
            F.log_softmax(logits / t, dim=1),
            F.log_softmax(self.teacher_logits(x) / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        return (1 - self.distill_weight) * hard + self.distill_weight * t * t * soft

