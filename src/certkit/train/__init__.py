"""Certified and adversarial training: objectives, schedules and one training loop."""

from certkit.train.batches import SelfTrainingConfig
from certkit.train.loop import TrainConfig, evaluate, train
from certkit.train.objectives import IBPTraining, Objective, PGDTraining, Standard
from certkit.train.schedules import Ramp

__all__ = ["IBPTraining", "Objective", "PGDTraining", "Ramp", "SelfTrainingConfig", "Standard", "TrainConfig",
           "evaluate", "train"]
