"""Normalizing flows ``g = f^-1`` (data -> latent), applied row by row: tabular flows on zuko,
and a Glow-like multi-scale flow for images."""

from flowpheno.flows.base import ActNorm, LatentFlow, build_flow
from flowpheno.flows.coupling import affine_coupling_flow
from flowpheno.flows.glow import GlowFlow
from flowpheno.flows.spline import spline_coupling_flow

__all__ = ["ActNorm", "GlowFlow", "LatentFlow", "affine_coupling_flow", "build_flow", "spline_coupling_flow"]
