"""Row-covariance models of the matrix-normal latent (the paper's core).

Each model gives the Gaussian term of the likelihood for ``Z`` (n x d) with
``vec(Z) ~ N(0, I_d (x) Sigma)``: ``log_det()`` for ``log det Sigma``, ``quad_form(Z)``
for the exact ``tr(Z^T Sigma^-1 Z)`` and ``minibatch_quad_form(Z_B, idx)`` for the
unbiased estimate of the same trace from a uniformly drawn batch. No I/O here.
"""

from flowpheno.dependence.base import DependenceModel, trace_estimate
from flowpheno.dependence.blocks import EquicorrelatedBlocks
from flowpheno.dependence.control_variate import LatentControlVariate
from flowpheno.dependence.iid import IIDCovariance
from flowpheno.dependence.kinship import HeldOutKinship, KinshipCovariance, optimise_s2

__all__ = [
    "DependenceModel",
    "EquicorrelatedBlocks",
    "HeldOutKinship",
    "IIDCovariance",
    "LatentControlVariate",
    "KinshipCovariance",
    "optimise_s2",
    "trace_estimate",
]
