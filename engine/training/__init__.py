"""Training: one loop for both stages (single process or Ray Train workers), resumable, with metrics and plots."""

from mvclam.engine.training.loop import TrainConfig, TrainingResult, train_loop

__all__ = ["TrainConfig", "TrainingResult", "train_loop"]
