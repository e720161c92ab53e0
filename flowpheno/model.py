"""A fitted phenotype model: covariate residualisation, standardisation and the flow.

Saved as ``model.safetensors`` (flow weights) plus ``model.json`` (architecture,
traits, covariate coefficients, scaling): loading never unpickles code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from flowpheno.errors import FlowphenoError
from flowpheno.flows import LatentFlow, build_flow
from flowpheno.io.atomic import atomic_path

MODEL_FORMAT = 1


def least_squares_residuals(values: np.ndarray, covariates: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Residuals of ``values`` on ``[1, covariates]`` and the coefficients (intercept first)."""
    design = np.ones((values.shape[0], 1))
    if covariates is not None and covariates.shape[1]:
        design = np.hstack([design, covariates])
    beta, *_ = np.linalg.lstsq(design, values, rcond=None)
    return values - design @ beta, beta


@dataclass
class PhenotypeModel:
    """Everything ``transform`` needs to map raw traits to Gaussianized ones."""

    flow: LatentFlow
    traits: list[str]
    covariates: list[str]
    beta: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    covariance: dict[str, Any] = field(default_factory=dict)
    covariate_columns: list[str] = field(default_factory=list)

    def standardise(self, values: np.ndarray, covariates: np.ndarray | None) -> np.ndarray:
        """Covariate residuals (stored coefficients) scaled to the training mean and SD."""
        design = np.ones((values.shape[0], 1))
        if self.covariates:
            if covariates is None:
                raise FlowphenoError(f"this model was fitted with covariates ({', '.join(self.covariates)}); pass --covar")
            design = np.hstack([design, covariates])
        return (values - design @ self.beta - self.center) / self.scale

    @torch.no_grad()
    def gaussianize(self, values: np.ndarray, covariates: np.ndarray | None = None, device: str = "cpu") -> np.ndarray:
        """Latent ``Z = g(standardised X)`` row by row; NaN rows where any input is missing."""
        standardised = self.standardise(values, covariates)
        complete = np.isfinite(standardised).all(axis=1)
        out = np.full(values.shape, np.nan)
        if complete.any():
            self.flow.to(device).eval()
            x = torch.as_tensor(standardised[complete], dtype=torch.float32, device=device)
            z = torch.cat([self.flow(x[i : i + 8192])[0] for i in range(0, x.shape[0], 8192)])
            out[complete] = z.double().cpu().numpy()
        return out

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        state = {key: value.detach().cpu().contiguous() for key, value in self.flow.state_dict().items()}
        with atomic_path(directory / "model.safetensors") as tmp:
            save_file(state, str(tmp))
        meta = {
            "format": MODEL_FORMAT,
            "flow": self.flow.config,
            "traits": self.traits,
            "covariates": self.covariates,
            "beta": self.beta.tolist(),
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "covariance": self.covariance,
            "covariate_columns": self.covariate_columns,
        }
        with atomic_path(directory / "model.json") as tmp:
            tmp.write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> PhenotypeModel:
        directory = Path(directory)
        for name in ("model.json", "model.safetensors"):
            if not (directory / name).exists():
                raise FlowphenoError(f"{directory}: no {name}; point --model at a directory written by flowpheno fit")
        meta = json.loads((directory / "model.json").read_text())
        if meta.get("format") != MODEL_FORMAT:
            raise FlowphenoError(f"{directory}/model.json: model format {meta.get('format')} is not {MODEL_FORMAT}; refit")
        flow = build_flow(meta["flow"])
        flow.load_state_dict(load_file(str(directory / "model.safetensors")))
        return cls(
            flow=flow,
            traits=meta["traits"],
            covariates=meta["covariates"],
            beta=np.asarray(meta["beta"], dtype=float),
            center=np.asarray(meta["center"], dtype=float),
            scale=np.asarray(meta["scale"], dtype=float),
            covariance=meta.get("covariance", {}),
            covariate_columns=meta.get("covariate_columns", []),
        )
