"""``flowpheno bench synthetic``: the paper's Table 1 on 2-D shapes, dependent training data.

Two protocols (:mod:`flowpheno.bench.protocols`): ``paper``, the authors' setup point by
point, every lr x weight decay (x grid value) of a run trained at once as one batched
model; ``fast``, the earlier protocol (:func:`run_one`).

One *run* = (setting, shape, method, seed). Its data are fixed by (setting, shape,
seed), so methods are compared on the same draws (paired). Every run tries each
learning-rate/weight-decay pair (and, for ``grid``, each covariance value), keeps the
one with the best iid validation NLL (early stopping on the same), and reports the
iid test NLL. Finished runs are stored one JSON each, named by a hash of everything
that changes their numbers (:func:`run_identity`), so a repeated command resumes and a
command with other sizes, another protocol or another flowpheno version trains anew.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowpheno import __version__
from flowpheno.bench.protocols import PAPER_VERSION, run_one_paper, setup_dict
from flowpheno.bench.shapes import SHAPES, blocks_sample, iid_sample, kinship_sample, sparse_spd_correlation
from flowpheno.dependence import EquicorrelatedBlocks, IIDCovariance, KinshipCovariance
from flowpheno.flows import spline_coupling_flow
from flowpheno.io.atomic import atomic_path
from flowpheno.io.kinship import spectral_decomposition
from flowpheno.threads import per_worker, thread_limits
from flowpheno.train import TrainConfig, fit_alternating, fit_grid, fit_joint, fit_schedule
from flowpheno.train.objective import iid_nll

SETTINGS = ("blocks", "kinship")
METHODS = {
    "blocks": ("baseline", "grid", "joint", "joint_blockbatch", "alternating", "alternating_strat"),
    "kinship": ("baseline", "grid", "alternating", "alternating_scaled"),
}
"""Blocks methods after ``joint`` are ours, not the paper's. ``joint_blockbatch``: ``joint``
with batches of whole blocks, so the Gaussian term of every batch is exact.
``alternating`` (blocks): stages of flow epochs at fixed per-block ``rho``, each followed by
the exact 1-D maximum-likelihood ``rho`` of every block on all latents.
``alternating_strat``: the same with stratified batches (large blocks dealt evenly over
the batches, small blocks whole), whose Gaussian term is bounded below in every batch.
Kinship ``alternating`` uses an exact 1-D search for ``s2`` (the paper took gradient steps);
``alternating_scaled`` (ours) fits ``s2`` jointly with each trait's latent scale, folded into
the flow (``TrainConfig.profile_scale``): the standardising ActNorm otherwise shrinks the
latent of a strongly related sample and biases ``s2`` down."""
GRIDS = {"blocks": (0.5, 0.7, 0.9), "kinship": (0.25, 0.5, 0.75)}
PROTOCOL = 1
"""The version of what :func:`run_one` does (data, search, training, evaluation): raise it
with any change that alters the numbers of a finished run, so stored runs are not reused."""


@dataclass
class BenchSizes:
    """Data and training sizes: the paper's by default, :meth:`quick` for CI."""

    n_blocks: int = 10_000
    n_kinship: int = 5_000
    n_eval: int = 5_000
    epochs: int = 25
    stages: int = 4
    patience: int = 12
    batch_size: int = 512
    optimisers: list[tuple[float, float]] = field(default_factory=lambda: [(1e-3, 0.0)])
    layers: int = 3
    hidden: int = 64
    bins: int = 16

    @classmethod
    def quick(cls) -> BenchSizes:
        return cls(
            n_blocks=2000,
            n_kinship=600,
            n_eval=1000,
            epochs=6,
            stages=2,
            patience=4,
            optimisers=[(2e-3, 0.0)],
            layers=2,
            hidden=32,
            bins=8,
        )


def _data_seed(setting: str, shape: str, seed: int) -> int:
    return seed * 1000 + SETTINGS.index(setting) * 100 + sorted(SHAPES).index(shape)


def make_data(setting: str, shape: str, seed: int, sizes: BenchSizes, cache_dir: Path | None) -> dict[str, Any]:
    """Dependent training rows, iid validation and test rows, and the covariance truth."""
    rng = np.random.default_rng(_data_seed(setting, shape, seed))
    if setting == "blocks":
        train = blocks_sample(shape, sizes.n_blocks, rng)
        data: dict[str, Any] = {"x": train.x, "block_ids": train.block_ids, "rho": train.rho}
    else:
        correlation = sparse_spd_correlation(sizes.n_kinship, np.random.default_rng(seed))
        train = kinship_sample(shape, correlation, rng)
        eigenvalues, eigenvectors, _ = spectral_decomposition(correlation, f"bench-correlation-seed{seed}", cache_dir)
        data = {"x": train.x, "eigenvalues": eigenvalues, "eigenvectors": eigenvectors, "s2": train.s2}
    data["val"] = iid_sample(shape, sizes.n_eval, rng)
    data["test"] = iid_sample(shape, sizes.n_eval, rng)
    return data


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(array, dtype=torch.float32)


def run_one(
    setting: str, shape: str, method: str, seed: int, sizes: BenchSizes, cache_dir: Path | None = None
) -> dict[str, Any]:
    """Train one method on one dataset; hyperparameters picked by validation NLL."""
    started = time.perf_counter()
    data = make_data(setting, shape, seed, sizes, cache_dir)
    x, x_val, x_test = _tensor(data["x"]), _tensor(data["val"]), _tensor(data["test"])
    n = x.shape[0]

    def make_flow() -> torch.nn.Module:
        torch.manual_seed(seed)
        return spline_coupling_flow(2, layers=sizes.layers, hidden=sizes.hidden, bins=sizes.bins, seed=seed)

    def kinship(s2: float = 0.0) -> KinshipCovariance:
        return KinshipCovariance(_tensor(data["eigenvalues"]), _tensor(data["eigenvectors"]), s2=s2)

    def blocks(rho: float = 0.5, per_block: bool = False) -> EquicorrelatedBlocks:
        return EquicorrelatedBlocks(torch.as_tensor(data["block_ids"]), rho=rho, shared=not per_block)

    best: dict[str, Any] | None = None
    for lr, weight_decay in sizes.optimisers:
        config = TrainConfig(
            epochs=sizes.epochs,
            stages=sizes.stages,
            batch_size=sizes.batch_size,
            lr=lr,
            weight_decay=weight_decay,
            seed=seed,
            patience=sizes.patience,
        )
        if method == "baseline":
            flow = make_flow()
            flow.initialize(x)
            outcome = fit_schedule(flow, IIDCovariance(n), x, x_val, config)
        elif method == "grid":
            make_dependence: Callable[[float], Any] = kinship if setting == "kinship" else blocks
            outcome = fit_grid(make_flow, make_dependence, GRIDS[setting], x, x_val, config)
        elif method == "joint" and setting == "blocks":
            outcome = fit_joint(make_flow(), blocks(0.5, per_block=True), x, x_val, config)
        elif method == "joint_blockbatch" and setting == "blocks":
            config.batching = "blocks"
            outcome = fit_joint(make_flow(), blocks(0.5, per_block=True), x, x_val, config)
        elif method in ("alternating", "alternating_scaled") and setting == "kinship":
            config.profile_scale = method == "alternating_scaled"
            outcome = fit_alternating(make_flow(), kinship(), x, x_val, config)
        elif method in ("alternating", "alternating_strat") and setting == "blocks":
            config.batching = "stratified" if method == "alternating_strat" else "uniform"
            outcome = fit_alternating(make_flow(), blocks(0.5, per_block=True), x, x_val, config)
        else:
            raise ValueError(f"method {method!r} is not defined for the {setting} setting")
        candidate = {"lr": lr, "weight_decay": weight_decay, "val_nll": outcome.best_val_nll, "outcome": outcome}
        if best is None or candidate["val_nll"] < best["val_nll"]:
            best = candidate
    assert best is not None
    outcome = best["outcome"]
    outcome.flow.eval()
    record: dict[str, Any] = {
        "setting": setting,
        "shape": shape,
        "method": method,
        "seed": seed,
        "lr": best["lr"],
        "weight_decay": best["weight_decay"],
        "val_nll": best["val_nll"],
        "test_nll": iid_nll(outcome.flow, x_test),
        "epochs_trained": len(outcome.epochs),
        "covariance": outcome.dependence.describe(),
        "grid": outcome.grid,
        "n_train": n,
        "seconds": time.perf_counter() - started,
    }
    if setting == "blocks" and method != "baseline" and not outcome.dependence.shared:
        learned = np.array(outcome.dependence.describe()["rho"])
        record["rho_mse"] = float(np.mean((learned - data["rho"]) ** 2))
        record["rho_mae"] = float(np.mean(np.abs(learned - data["rho"])))
        repeated = np.bincount(data["block_ids"]) > 1  # a singleton block carries no information on its rho
        record["rho_mae_repeated"] = float(np.mean(np.abs(learned - data["rho"])[repeated]))
    record["flow_state"] = {k: v.tolist() for k, v in outcome.flow.state_dict().items()} if seed == 0 else None
    record["flow_config"] = outcome.flow.config
    return record


def run_identity(
    setting: str, shape: str, method: str, seed: int, sizes: BenchSizes, protocol: str = "fast"
) -> dict[str, Any]:
    """Everything that changes a run's numbers: setting, shape, method, seed, every size
    (n, epochs, optimisers, flow), the protocol (``fast``: its version number, as before
    there was a choice; ``paper``: name, version and :class:`PaperSetup`) and the flowpheno version."""
    identity = {
        "setting": setting,
        "shape": shape,
        "method": method,
        "seed": seed,
        "sizes": asdict(sizes),
        "protocol": PROTOCOL,
        "flowpheno_version": __version__,
    }
    if protocol != "fast":
        identity.update(protocol=f"{protocol}-{PAPER_VERSION}", setup=setup_dict())
    return identity


def run_protocol(
    setting: str,
    shape: str,
    method: str,
    seed: int,
    sizes: BenchSizes,
    cache_dir: Path | None = None,
    protocol: str = "fast",
) -> dict[str, Any]:
    """One run under ``protocol``: :func:`run_one` (``fast``) or :func:`run_one_paper` (``paper``)."""
    if protocol == "paper":
        return run_one_paper(setting, shape, method, seed, sizes, cache_dir)
    return {**run_one(setting, shape, method, seed, sizes, cache_dir), "protocol": "fast"}


def run_hash(identity: dict[str, Any]) -> str:
    """12 hex digits of the SHA-256 of the canonical JSON of a :func:`run_identity`."""
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def run_key(setting: str, shape: str, method: str, seed: int, sizes: BenchSizes, protocol: str = "fast") -> str:
    """File stem of a finished run: readable fields, then the hash of its identity."""
    return (
        f"{setting}_{shape}_{method}_seed{seed}_{run_hash(run_identity(setting, shape, method, seed, sizes, protocol))}"
    )


def stored_run(path: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The record stored at ``path`` when it is a finished run of exactly ``identity``."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable: train it again
    if record.get("run_hash") != run_hash(identity) or record.get("identity") != json.loads(json.dumps(identity)):
        return None
    return record


def prepare_kinship(seeds: Iterable[int], sizes: BenchSizes, cache_dir: Path) -> None:
    """Eigendecompose each seed's kinship once, with every core, before any worker starts.

    Workers run on one thread each, and two of them asking for the same seed would
    otherwise both spend minutes on the same ``n x n`` decomposition; afterwards they
    only read the cache.
    """
    for seed in sorted(set(seeds)):
        correlation = sparse_spd_correlation(sizes.n_kinship, np.random.default_rng(seed))
        spectral_decomposition(correlation, f"bench-correlation-seed{seed}", cache_dir)


def _worker(args: tuple[str, str, str, int, BenchSizes, Path, str], threads: int) -> dict[str, Any]:
    with thread_limits(threads):
        return run_protocol(*args[:5], cache_dir=args[5], protocol=args[6])


def run_all(
    out: Path,
    settings: Iterable[str],
    shapes: Iterable[str],
    methods: dict[str, list[str]],
    seeds: Iterable[int],
    sizes: BenchSizes,
    jobs: int = 1,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    on_plan: Callable[[int, int], None] | None = None,
    threads: int | None = None,
    protocol: str = "fast",
    train: bool = True,
) -> list[dict[str, Any]]:
    """The records of every (setting, shape, method, seed) asked for, in that order: stored
    runs of the same :func:`run_identity` are reused, the others trained over ``jobs``
    processes and stored as ``out/runs/{run_key}.json``. ``on_plan(done, total)`` is told
    how many are reused before training starts; ``on_result`` gets each new record.
    Stored runs that were not asked for (other sizes, settings, methods) are left alone
    and are not returned. ``threads`` (default: the CPUs this process may use) is shared:
    this process uses all of them, each of the ``jobs`` workers ``threads // jobs`` (at least 1).
    ``protocol``: ``fast`` (:func:`run_one`) or ``paper`` (:mod:`flowpheno.bench.protocols`).
    ``train=False``: nothing is trained; only the stored runs are returned (in the same order)."""
    runs_dir = out / "runs"
    cache_dir = out / "cache"
    if train:  # a call that only reads the stored runs creates nothing
        runs_dir.mkdir(parents=True, exist_ok=True)
        cache_dir.mkdir(exist_ok=True)
    asked = [
        (setting, shape, method, seed)
        for setting in settings
        for shape in shapes
        for seed in seeds
        for method in methods[setting]
    ]
    records: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    todo = []
    for setting, shape, method, seed in asked:
        found = stored_run(
            runs_dir / f"{run_key(setting, shape, method, seed, sizes, protocol)}.json",
            run_identity(setting, shape, method, seed, sizes, protocol),
        )
        if found is not None:
            records[(setting, shape, method, seed)] = found
        else:
            todo.append((setting, shape, method, seed, sizes, cache_dir, protocol))
    if on_plan:
        on_plan(len(records), len(asked))
    if not train:
        return [records[key] for key in asked if key in records]

    def store(record: dict[str, Any]) -> None:
        setting, shape, method, seed = record["setting"], record["shape"], record["method"], record["seed"]
        identity = run_identity(setting, shape, method, seed, sizes, protocol)
        text = json.dumps({**record, "identity": identity, "run_hash": run_hash(identity)})
        with atomic_path(runs_dir / f"{run_key(setting, shape, method, seed, sizes, protocol)}.json") as tmp:
            tmp.write_text(text)
        record = records[(setting, shape, method, seed)] = json.loads(text)  # as a later call reads it
        if on_result:
            on_result(record)

    with thread_limits(threads):
        prepare_kinship([task[3] for task in todo if task[0] == "kinship"], sizes, cache_dir)
        if jobs <= 1:
            for task in todo:
                store(run_protocol(*task[:5], cache_dir=task[5], protocol=task[6]))
        else:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                each = per_worker(threads, jobs)
                for future in as_completed([pool.submit(_worker, task, each) for task in todo]):
                    store(future.result())
    return [records[key] for key in asked]


def sizes_dict(sizes: BenchSizes) -> dict[str, Any]:
    return asdict(sizes)
