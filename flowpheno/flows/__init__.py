"""Normalizing flows ``g = f^-1`` (data -> latent), applied row by row: tabular flows on zuko,
and a Glow-like multi-scale flow for images, all behind one interface (:class:`LatentFlow`)."""

from flowpheno.flows.base import ActNorm, LatentFlow, TabularFlow, build_flow, seeded_init
from flowpheno.flows.coupling import affine_coupling_flow
from flowpheno.flows.glow import GlowFlow
from flowpheno.flows.spline import spline_coupling_flow

__all__ = [
    "ActNorm",
    "GlowFlow",
    "LatentFlow",
    "TabularFlow",
    "affine_coupling_flow",
    "build_flow",
    "seeded_init",
    "spline_coupling_flow",
]
