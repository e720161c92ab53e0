"""Objectives and training schedules (iid, grid, alternating, joint)."""

from flowpheno.train.objective import exact_nll, iid_nll, minibatch_nll
from flowpheno.train.schedules import (
    EpochTrainer,
    FitOutcome,
    TrainConfig,
    fit_alternating,
    fit_grid,
    fit_iid,
    fit_joint,
    fit_schedule,
)

__all__ = [
    "EpochTrainer",
    "FitOutcome",
    "TrainConfig",
    "exact_nll",
    "fit_alternating",
    "fit_grid",
    "fit_iid",
    "fit_joint",
    "fit_schedule",
    "iid_nll",
    "minibatch_nll",
]
