"""A fitted phenotype model: covariate residualisation, standardisation and the flow.

Saved as ``model.safetensors`` (flow weights) plus ``model.json`` (architecture,
traits, covariate coefficients and levels, scaling, the constants that give the weights
their meaning, checksums): loading never unpickles code, and a model file that was
edited, truncated or written by another format stops with one line.

``model.json`` format 2:

- ``format``: 2 (format 1 models, whose output columns were not un-permuted and so
  mislabelled, are refused);
- ``flow``: the builder's config (``kind``, ``features``, ``layers``, ``hidden``, ``depth``, ``seed``);
- ``flow_constants``: ActNorm's scale bound, the coupling transform, the layer order
  (the final fixed permutation that un-permutes the output included) and the permutations,
  the zuko and torch versions; a model whose constants differ from this code's is refused;
- ``probe``: the flow's output on a fixed input at save time, recomputed on load (a change
  of zuko's formulas shows there);
- ``traits``, ``covariates`` (design columns), ``covariate_columns`` (file columns),
  ``levels`` (each categorical covariate's levels, reference first), ``beta``
  (``(1 + covariates) x traits``), ``center``, ``scale`` (``traits``), ``covariance``;
- ``checksums``: sha256 of ``model.safetensors`` and of the canonical JSON of everything
  above that defines the mapping, verified on load.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from flowpheno.errors import FlowphenoError
from flowpheno.flows import TabularFlow, build_flow
from flowpheno.flows.base import FLOW_KINDS, flow_constants
from flowpheno.io.atomic import atomic_path

MODEL_FORMAT = 2
"""Bumped whenever the meaning of saved weights or metadata changes."""

_MAPPING = (
    "flow",
    "flow_constants",
    "probe",
    "traits",
    "covariates",
    "covariate_columns",
    "levels",
    "beta",
    "center",
    "scale",
)
"""The fields of ``model.json`` that define the mapping (covered by ``mapping_sha256``)."""
_REQUIRED = (*_MAPPING, "checksums")
_PROBE_ROWS = 4
_PROBE_TOLERANCE = 1e-4


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

    flow: TabularFlow
    traits: list[str]
    covariates: list[str]
    beta: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    covariance: dict[str, Any] = field(default_factory=dict)
    covariate_columns: list[str] = field(default_factory=list)
    levels: dict[str, list[str]] = field(default_factory=dict)

    def standardise(self, values: np.ndarray, covariates: np.ndarray | None) -> np.ndarray:
        """Covariate residuals (stored coefficients) scaled to the training mean and SD."""
        design = np.ones((values.shape[0], 1))
        if self.covariates:
            if covariates is None:
                raise FlowphenoError(
                    f"this model was fitted with covariates ({', '.join(self.covariates)}); pass --covar"
                )
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
        """Write ``model.safetensors`` and ``model.json`` (format :data:`MODEL_FORMAT`) into ``directory``."""
        directory = Path(directory)
        state = {key: value.detach().cpu().contiguous() for key, value in self.flow.state_dict().items()}
        with atomic_path(directory / "model.safetensors") as tmp:
            save_file(state, str(tmp))
            weights_sha256 = hashlib.sha256(tmp.read_bytes()).hexdigest()
        meta: dict[str, Any] = {
            "format": MODEL_FORMAT,
            "flow": self.flow.config,
            "flow_constants": flow_constants(self.flow),
            "probe": _probe(self.flow),
            "traits": list(self.traits),
            "covariates": list(self.covariates),
            "covariate_columns": list(self.covariate_columns),
            "levels": {key: list(value) for key, value in self.levels.items()},
            "beta": np.asarray(self.beta, dtype=float).tolist(),
            "center": np.asarray(self.center, dtype=float).tolist(),
            "scale": np.asarray(self.scale, dtype=float).tolist(),
            "covariance": self.covariance,
        }
        meta["checksums"] = {"weights_sha256": weights_sha256, "mapping_sha256": _mapping_sha256(meta)}
        with atomic_path(directory / "model.json") as tmp:
            tmp.write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> PhenotypeModel:
        """Read a model written by :meth:`save`.

        Raises :class:`FlowphenoError` (one line naming the file) when a file is absent,
        ``model.json`` is not JSON, lacks fields or has an unknown format, the flow
        constants differ from this code's, ``model.safetensors`` is unreadable or has
        missing, extra, misshapen or non-finite tensors, ``scale`` is not positive,
        ``beta``/``center`` are not finite, or a checksum or the probe does not match
        (edited or corrupted).
        """
        directory = Path(directory)
        for name in ("model.json", "model.safetensors"):
            if not (directory / name).exists():
                raise FlowphenoError(f"{directory}: no {name}; point --model at a directory written by flowpheno fit")
        json_path, weights_path = directory / "model.json", directory / "model.safetensors"
        meta = _read_meta(json_path)
        flow = _build(meta, json_path)
        _load_weights(flow, weights_path)
        if flow_constants(flow)["permutations"] != meta["flow_constants"].get("permutations"):
            raise _damaged(
                weights_path, "permutations differ from those in model.json", "the files were edited or mixed up"
            )
        traits, covariates = meta["traits"], meta["covariates"]
        d = len(traits)
        beta = _array(meta, "beta", (1 + len(covariates), d), json_path)
        center = _array(meta, "center", (d,), json_path)
        scale = _array(meta, "scale", (d,), json_path)
        if not (scale > 0).all():
            j = int(np.flatnonzero(~(scale > 0))[0])
            raise _damaged(json_path, f"'scale' of trait {traits[j]!r} is {scale[j]:g}, not positive")
        checksums = meta["checksums"] if isinstance(meta["checksums"], dict) else {}
        if checksums.get("weights_sha256") != hashlib.sha256(weights_path.read_bytes()).hexdigest():
            raise _damaged(weights_path, "checksum does not match model.json", "the weights were edited or corrupted")
        if checksums.get("mapping_sha256") != _mapping_sha256(meta):
            what = "checksum of traits, covariates, levels, beta, center, scale and flow settings does not match"
            raise _damaged(json_path, what)
        _verify_probe(flow, meta, json_path)
        return cls(
            flow=flow,
            traits=list(traits),
            covariates=list(covariates),
            beta=beta,
            center=center,
            scale=scale,
            covariance=meta.get("covariance") or {},
            covariate_columns=list(meta["covariate_columns"]),
            levels={key: list(value) for key, value in meta["levels"].items()},
        )


def _damaged(path: Path, what: str, why: str = "the file was edited or corrupted") -> FlowphenoError:
    """One line for a model file that cannot be what flowpheno fit wrote."""
    return FlowphenoError(f"{path}: {what}; {why}: restore the run directory or refit")


def _mapping_sha256(meta: dict[str, Any]) -> str:
    mapping = {key: meta.get(key) for key in _MAPPING}
    canonical = json.dumps(mapping, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _probe_input(features: int) -> torch.Tensor:
    return torch.linspace(-2.0, 2.0, _PROBE_ROWS * features, dtype=torch.float32).reshape(_PROBE_ROWS, features)


@torch.no_grad()
def _probe(flow: TabularFlow) -> dict[str, list[Any]]:
    """The flow's latent and log-det on a fixed ``4 x d`` input (standardised units)."""
    on_cpu = copy.deepcopy(flow).cpu()  # the same arithmetic at save and at load, whatever the fit's device
    z, ladj = on_cpu(_probe_input(int(flow.config["features"])))
    return {"z": z.double().cpu().numpy().tolist(), "ladj": ladj.double().cpu().numpy().tolist()}


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _damaged(path, f"not valid JSON ({error})", "the file is truncated or corrupted") from None
    if not isinstance(meta, dict):
        raise _damaged(path, f"not a flowpheno model (a JSON {type(meta).__name__}, not an object)")
    if "format" not in meta:
        raise _damaged(path, "no 'format' field", "not a model written by flowpheno fit")
    if meta["format"] == 1:
        raise FlowphenoError(
            f"{path}: model format 1 is no longer read (its output columns did not follow the trait order); "
            "refit with this version of flowpheno"
        )
    if meta["format"] != MODEL_FORMAT:
        raise FlowphenoError(
            f"{path}: model format {meta['format']!r} is unknown to this flowpheno (it reads format {MODEL_FORMAT}); "
            "use the flowpheno version that wrote it, or refit"
        )
    absent = [key for key in _REQUIRED if key not in meta]
    if absent:
        raise _damaged(path, f"missing field(s) {', '.join(absent)}", "the file was edited or truncated")
    traits = meta["traits"]
    names = isinstance(traits, list) and all(isinstance(t, str) for t in traits)
    if not names or not traits or len(set(traits)) != len(traits):
        raise _damaged(path, "'traits' must be a list of distinct names")
    for key in ("covariates", "covariate_columns"):
        if not isinstance(meta[key], list) or not all(isinstance(t, str) for t in meta[key]):
            raise _damaged(path, f"{key!r} must be a list of names")
    levels = meta["levels"]
    if not isinstance(levels, dict) or not all(
        isinstance(v, list) and v and all(isinstance(x, str) for x in v) for v in levels.values()
    ):
        raise _damaged(path, "'levels' must map covariate columns to lists of levels")
    if not isinstance(meta["flow"], dict) or not isinstance(meta["flow_constants"], dict):
        raise _damaged(path, "'flow' and 'flow_constants' must be JSON objects")
    return meta


def _build(meta: dict[str, Any], path: Path) -> TabularFlow:
    config = meta["flow"]
    if config.get("kind") not in FLOW_KINDS:
        raise _damaged(path, f"unknown flow kind {config.get('kind')!r} (known: {', '.join(FLOW_KINDS)})")
    if config.get("features") != len(meta["traits"]):
        raise _damaged(path, f"the flow has {config.get('features')!r} features for {len(meta['traits'])} traits")
    try:
        flow = build_flow(config)
    except (TypeError, ValueError, KeyError, RuntimeError, AssertionError) as error:
        raise _damaged(path, f"flow settings {config} cannot be built ({error})") from None
    expected, stored = flow_constants(flow), meta["flow_constants"]
    changed = [
        key for key in expected if key not in ("zuko", "torch", "permutations") and stored.get(key) != expected[key]
    ]
    if changed:
        raise FlowphenoError(
            f"{path}: flow constant(s) {', '.join(changed)} differ from this flowpheno's "
            "(the weights would mean something else); use the flowpheno version that wrote the model, or refit"
        )
    return flow


def _load_weights(flow: TabularFlow, path: Path) -> None:
    try:
        state = load_file(str(path))
    except Exception as error:  # safetensors raises several types for truncated or garbage files
        reason = " ".join(str(error).split())[:120]
        raise _damaged(path, f"not a readable safetensors file ({reason})", "it is truncated or corrupted") from None
    expected = flow.state_dict()
    missing = [key for key in expected if key not in state]
    extra = [key for key in state if key not in expected]
    if missing or extra:
        what = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(extra[:3])}"
        raise _damaged(
            path, f"tensors do not match the flow in model.json ({what})", "the files were edited or mixed up"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape) or tensor.dtype != expected[key].dtype:
            what = (
                f"tensor {key} is {tensor.dtype} {tuple(tensor.shape)}, "
                f"the flow needs {expected[key].dtype} {tuple(expected[key].shape)}"
            )
            raise _damaged(path, what, "the files were edited or mixed up")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise _damaged(path, f"tensor {key} holds NaN or infinite weights")
    flow.load_state_dict(state)


def _array(meta: dict[str, Any], key: str, shape: tuple[int, ...], path: Path) -> np.ndarray:
    try:
        value = np.asarray(meta[key], dtype=float)
    except (TypeError, ValueError):
        value = None
    if value is None or value.shape != shape:
        raise _damaged(path, f"{key!r} must be numbers of shape {shape}")
    if not np.isfinite(value).all():
        raise _damaged(path, f"{key!r} holds NaN or infinite values")
    return value


def _verify_probe(flow: TabularFlow, meta: dict[str, Any], path: Path) -> None:
    try:
        expected_z = np.asarray(meta["probe"]["z"], dtype=float)
        expected_ladj = np.asarray(meta["probe"]["ladj"], dtype=float)
    except (TypeError, KeyError, ValueError):
        raise _damaged(path, "'probe' is malformed") from None
    now = _probe(flow)
    z, ladj = np.asarray(now["z"]), np.asarray(now["ladj"])
    if (
        z.shape != expected_z.shape
        or ladj.shape != expected_ladj.shape
        or not (
            np.allclose(z, expected_z, rtol=_PROBE_TOLERANCE, atol=_PROBE_TOLERANCE)
            and np.allclose(ladj, expected_ladj, rtol=_PROBE_TOLERANCE, atol=_PROBE_TOLERANCE)
        )
    ):
        saved = meta["flow_constants"].get("zuko")
        raise FlowphenoError(
            f"{path}: the flow maps its check input differently than when it was saved (zuko {saved} then, "
            f"{_version('zuko')} now): its transforms changed meaning; install the versions that wrote it or refit"
        )


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"
