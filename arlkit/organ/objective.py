"""``organ_classifier``: an auxiliary pretraining objective that teaches organ recognition.

The student backbone runs once more on the (unmasked) global views with ``unknown``
conditioning, and a linear head on its class token is trained by cross-entropy against
the organ labels (``unknown`` images are ignored). The label must not reach the features
the head reads, or the head would learn to read the label back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arlkit.engine.objectives import Objective, ObjectiveContext
from arlkit.engine.step import Step
from arlkit.errors import ConfigError
from arlkit.taxonomy import Taxonomy

__all__ = ["OrganClassifierObjective"]


class OrganClassifierObjective(Objective):
    """Cross-entropy of an organ head on ``unknown``-conditioned class tokens.

    Args:
        context: injected by the engine.
        num_classes: organ classes ``K``; None (default) takes the recipe taxonomy's size.
        label_smoothing: cross-entropy label smoothing.
    """

    def __init__(self, context: ObjectiveContext, num_classes: int | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__(context)
        if num_classes is None:
            num_classes = context.taxonomy.num_classes if context.taxonomy is not None else 16
        if num_classes < 2 or not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(
                f"organ_classifier: need num_classes >= 2 and 0 <= label_smoothing < 1, got "
                f"{num_classes}, {label_smoothing}"
            )
        tax = context.taxonomy
        if tax is not None and num_classes != tax.num_classes:
            # the data's unknown index is the taxonomy's size: with any other num_classes,
            # unknown images would be trained as a class, or an organ ignored as unknown
            raise ConfigError(
                f"organ_classifier: num_classes={num_classes} but the recipe taxonomy has "
                f"{tax.num_classes} organs; leave num_classes unset (it defaults to the "
                "taxonomy's size)"
            )
        self.num_classes, self.label_smoothing = num_classes, label_smoothing

    def build_heads(self) -> nn.ModuleDict:
        from arlkit.organ.classifier import OrganClassifier

        tax = self.context.taxonomy
        if tax is None or tax.num_classes != self.num_classes:
            tax = Taxonomy(tuple(f"organ{i}" for i in range(self.num_classes)))
        return nn.ModuleDict({"classifier": OrganClassifier(self.context.embed_dim, tax)})

    def loss(self, step: Step, student: nn.Module) -> Tensor:
        organ = step.organ_for(step.n_global)  # (V_g·B,)
        if bool((organ > self.num_classes).any()):
            raise ConfigError(
                f"organ_classifier: organ index {int(organ.max())} exceeds num_classes="
                f"{self.num_classes}; set num_classes to the recipe taxonomy's size"
            )
        tokens = student.backbone.forward_features(step.global_views, None)  # (R, 1+N, C)
        logits = student.heads[self.name]["classifier"](tokens[:, 0])  # (R, K)
        known = organ < self.num_classes
        if not bool(known.any()):
            return logits.sum() * 0.0  # keeps the graph; no labelled image in this batch
        return F.cross_entropy(logits[known].float(), organ[known],
                               label_smoothing=self.label_smoothing)

    @torch.no_grad()
    def accuracy(self, step: Step, student: nn.Module) -> float:
        """Organ accuracy on the labelled global views of ``step`` (for logs and tests)."""
        organ = step.organ_for(step.n_global)
        tokens = student.backbone.forward_features(step.global_views, None)
        pred = student.heads[self.name]["classifier"](tokens[:, 0]).argmax(-1)
        known = organ < self.num_classes
        return float((pred[known] == organ[known]).float().mean()) if bool(known.any()) else 0.0
