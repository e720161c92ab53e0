"""The ``flowpheno bench`` experiments as library calls: check the output folder, run every
(method, seed), write ``results.json``, the Markdown table and the figure as a whole.

The CLI parses options and calls one of :func:`run_synthetic`, :func:`run_stocks`,
:func:`run_images`; each returns the one-line summary it prints. ``progress`` is a factory
of rich progress bars (:func:`flowpheno.progress.progress_bars`); None draws nothing.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from flowpheno.bench.results import command_line, package_versions, write_results
from flowpheno.errors import FlowphenoError, OptionError
from flowpheno.io.atomic import StagedDirectory, results_folder, write_errors
from flowpheno.threads import thread_limits

Bars = Callable[[], AbstractContextManager[Any]]
"""A factory of progress bars with rich's ``add_task(description, total=)`` and
``update(task, advance=, completed=)``."""


class _NoBars:
    """Progress bars that draw nothing."""

    def add_task(self, description: str, total: int) -> int:
        return 0

    def update(self, task: int, **_: Any) -> None:
        return None


def _bars(progress: Bars | None) -> AbstractContextManager[Any]:
    return progress() if progress is not None else nullcontext(_NoBars())


def chosen_methods(methods: str, allowed: tuple[str, ...]) -> list[str]:
    """``--methods a,b`` as a list, each checked against the experiment's methods.

    Raises:
        OptionError: a name not in ``allowed`` (the message lists them).
    """
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    for name in chosen:
        if name not in allowed:
            raise OptionError(f"--methods {name!r}: choose from {', '.join(allowed)}")
    return chosen


def methods_by_seeds(
    methods: list[str],
    seeds: list[int],
    run: Callable[[str, int], tuple[dict[str, Any], Any]],
    progress: Bars | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every (seed, method) run in that order; the records, and the seed-0 flow per method."""
    records, flows = [], {}
    with _bars(progress) as bars:
        task = bars.add_task("runs (method x seed)", total=len(methods) * len(seeds))
        for seed in seeds:
            for method in methods:
                record, flow = run(method, seed)
                records.append(record)
                if seed == 0:
                    flows[method] = flow
                bars.update(task, advance=1)
    return records, flows


def run_synthetic(
    out: Path,
    settings: list[str],
    shapes: list[str],
    methods: str | None,
    seeds: int,
    quick: bool,
    jobs: int,
    threads: int | None,
    progress: Bars | None = None,
    argv: list[str] | None = None,
    protocol: str = "paper",
    stored_only: bool = False,
) -> str:
    """Table 1 (:mod:`flowpheno.bench.synthetic`): every (setting, shape, method, seed) run,
    resumable in ``out`` (finished runs are kept and reused); writes ``table1.md``,
    ``results.json`` (exactly the runs asked for in this call) and a figure per setting.
    ``protocol``: ``paper`` (the authors' setup, :mod:`flowpheno.bench.protocols`, every
    setting of a run trained as members of one batched model) or ``fast`` (the earlier one).
    ``stored_only``: train nothing; the table, results.json and figures of the finished runs
    among those asked for (a long run's progress, or the part of a grid that is done).

    Raises:
        OptionError: an unknown setting, shape, method or protocol. FlowphenoError: ``out`` refused.
    """
    from flowpheno.bench import synthetic
    from flowpheno.bench.protocols import PAPER_VERSION, PROTOCOL_METHODS, PROTOCOLS, paper_sizes
    from flowpheno.bench.report import figure, table1
    from flowpheno.bench.shapes import SHAPES

    settings, shapes = list(dict.fromkeys(settings)), list(dict.fromkeys(shapes))  # each once, in order
    if not settings:
        raise OptionError("--setting: name blocks, kinship or both")
    for name in settings:
        if name not in synthetic.SETTINGS:
            raise OptionError(f"--setting {name!r}: choose blocks and/or kinship")
    for name in shapes:
        if name not in SHAPES:
            raise OptionError(f"--shapes {name!r}: choose from {', '.join(sorted(SHAPES))}")
    if protocol not in PROTOCOLS:
        raise OptionError(f"--protocol {protocol!r}: choose paper or fast")
    available = PROTOCOL_METHODS if protocol == "paper" else synthetic.METHODS
    wanted = {s: list(available[s]) for s in settings}
    if methods:
        allowed = tuple(dict.fromkeys(m for s in settings for m in available[s]))
        for name in [m.strip() for m in methods.split(",")]:
            if name in allowed or not name:
                continue
            homes = [s for s in synthetic.SETTINGS if name in synthetic.METHODS[s]]  # where fast runs it
            if protocol == "paper" and homes and not any(name in available[s] for s in homes):
                also = "" if homes[0] in settings else f" --setting {homes[0]}"
                raise OptionError(
                    f"--methods {name!r} is a {homes[0]} method of --protocol fast only; "
                    f"drop it or add --protocol fast{also}"
                )
            other = [s for s in synthetic.SETTINGS if s not in settings and name in available[s]]
            if other:
                raise OptionError(f"--methods {name!r} is a method of the {other[0]} setting; add --setting {other[0]}")
        names = chosen_methods(methods, allowed)
        wanted = {s: [m for m in available[s] if m in names] for s in settings}
    if not any(wanted.values()):
        every = ", ".join(dict.fromkeys(m for s in settings for m in available[s]))
        raise OptionError(f"--methods {methods!r}: name at least one of {every}")
    sizes = (
        paper_sizes(quick) if protocol == "paper" else synthetic.BenchSizes.quick() if quick else synthetic.BenchSizes()
    )
    seed_list = list(range(1 if quick else seeds))
    total = sum(len(wanted[s]) for s in settings) * len(shapes) * len(seed_list)
    stored: list[dict] = []
    if stored_only and (Path(out).is_dir() or not Path(out).exists()):  # (a file: results_folder says so)
        if not (Path(out) / "runs").is_dir():
            raise OptionError(f"--stored-only: --out {out} holds no runs/ folder of finished runs; drop --stored-only")
        stored = synthetic.run_all(
            Path(out), settings, shapes, wanted, seed_list, sizes, protocol=protocol, train=False
        )
        if not stored:
            raise FlowphenoError(
                f"--out {out}: none of the {total} runs asked for is stored there; "
                "run without --stored-only to train them"
            )
    results_folder(
        out,
        "bench synthetic",
        legacy=("runs", "cache", r"results\.json", r"table1\.md", r"figure_.*\.png"),
        legacy_contents={"runs": r"(blocks|kinship)_[a-z]+_[a-z_]+_seed\d+_[0-9a-f]+\.json"},
    )
    started = time.perf_counter()
    if stored_only:
        results = stored  # read once, above, before the folder was accepted
    else:
        with _bars(progress) as bars:
            task = bars.add_task("runs (setting x shape x method x seed)", total=total)
            results = synthetic.run_all(
                out,
                settings,
                shapes,
                wanted,
                seed_list,
                sizes,
                jobs,
                on_result=lambda record: bars.update(task, advance=1),
                on_plan=lambda done, _: bars.update(task, completed=done),
                threads=threads,
                protocol=protocol,
            )
    wall = time.perf_counter() - started  # results: exactly the runs asked for in this call (stored ones)
    command = command_line("flowpheno bench synthetic", argv, skip=3)
    slim = [{k: v for k, v in r.items() if k not in ("flow_state", "identity")} for r in results]  # sizes: once, below
    write_results(
        out,
        {
            "table1.md": table1(results, None if stored_only else wall, command, protocol),
            "results.json": {
                "command": command,
                "sizes": synthetic.sizes_dict(sizes),
                "protocol": protocol,
                "protocol_version": PAPER_VERSION if protocol == "paper" else synthetic.PROTOCOL,
                "versions": package_versions(),
                "wall_seconds_this_call": wall,
                "runs_asked": total,
                "runs": slim,
            },
        },
    )
    drawn = []
    for name in settings:  # crescent when its seed-0 baseline is here, else the first shape that has one
        drawable = {
            r["shape"] for r in results if r["setting"] == name and r["method"] == "baseline" and r["seed"] == 0
        }
        shape = next((s for s in sorted(shapes, key=lambda s: s != "crescent") if s in drawable), None)
        if shape is None:
            continue
        train = synthetic.make_data(name, shape, 0, sizes, out / "cache")["x"]
        if figure(name, shape, results, train, out / f"figure_{name}_{shape}.png"):
            drawn.append(f"figure_{name}_{shape}.png")
    for stale in out.glob("figure_*.png"):  # an earlier call's figure would not match this call's results
        if stale.name not in drawn:
            stale.unlink()
    figures = (
        f"{len(drawn)} figure{'s' if len(drawn) != 1 else ''}"
        if drawn
        else "no figure (it needs a seed-0 baseline run)"
    )
    missing = f"; {total - len(results)} of the {total} asked for not run yet" if len(results) < total else ""
    runs = f"{len(results)} run{'s' if len(results) != 1 else ''}"
    return f"wrote {out}/table1.md, results.json and {figures} ({runs}, {wall / 60:.1f} min this call{missing})"


def run_stocks(
    out: Path,
    prices: list[Path],
    pairs: list[str],
    start: str | None,
    end: str | None,
    seeds: int,
    methods: str,
    quick: bool,
    overwrite: bool,
    threads: int | None,
    progress: Bars | None = None,
    argv: list[str] | None = None,
) -> str:
    """The stocks experiment (:mod:`flowpheno.bench.stocks`): daily log-return pairs, one
    equicorrelated block per pair; writes ``table.md``, ``results.json`` and
    ``density_regions.png`` into ``out`` as a whole.

    Raises:
        FlowphenoError: an unknown method, unreadable prices, a pair not found, or ``out`` refused.
    """
    from flowpheno.bench.stocks import METHODS, StocksSizes, figure, load_pairs, run_method, sizes_dict, table
    from flowpheno.io.prices import marked_synthetic

    chosen = chosen_methods(methods, METHODS)
    sizes = StocksSizes.quick() if quick else StocksSizes()
    seed_list = list(range(1 if quick else seeds))
    staged = StagedDirectory(
        out,
        "bench stocks",
        {"--prices": list(prices)},
        overwrite=overwrite,
        legacy=("results.json", "table.md", "density_regions.png"),
    )
    with staged, thread_limits(threads):
        data = load_pairs(list(prices), pairs, start, end)
        synthetic = marked_synthetic(list(prices))
        started = time.perf_counter()
        records, flows = methods_by_seeds(
            chosen, seed_list, lambda method, seed: run_method(method, data, seed, sizes), progress
        )
        wall = time.perf_counter() - started
        command = command_line("flowpheno bench stocks", argv, skip=3)
        with write_errors(out):  # an error names --out, not the staging folder
            write_results(
                staged.path,
                {
                    "table.md": table(records, data, command, wall, synthetic),
                    "results.json": {
                        "command": command,
                        "sizes": sizes_dict(sizes),
                        "pairs": data.days,
                        "synthetic_data": synthetic,
                        "versions": package_versions(),
                        "wall_seconds": wall,
                        "runs": records,
                    },
                },
            )
            figure(flows, data, staged.path / "density_regions.png")
        staged.commit()
    return f"wrote {out}/table.md, results.json, density_regions.png ({len(records)} runs, {wall / 60:.1f} min)"


def run_images(
    out: Path,
    images: Path | None,
    size: int,
    grayscale: bool,
    seeds: int,
    methods: str,
    quick: bool,
    device: str,
    overwrite: bool,
    threads: int | None,
    progress: Bars | None = None,
    argv: list[str] | None = None,
) -> str:
    """The images experiment (:mod:`flowpheno.bench.images`): repeated images of individuals,
    one equicorrelated block each (``images``: an LFW-layout folder; None: the embedded digits);
    writes ``table.md``, ``results.json`` and ``samples.png`` into ``out`` as a whole.

    Raises:
        FlowphenoError: an unknown method, ``size`` not divisible by 4, an unreadable image
            folder, or ``out`` refused.
    """
    from flowpheno.bench.images import METHODS, ImageSizes, run_method, sample_figure, sizes_dict, split_images, table
    from flowpheno.io.images import read_image_folder

    chosen = chosen_methods(methods, METHODS)
    size = 8 if quick else size
    if size % 4:
        raise OptionError(f"--size {size}: the two-level flow needs a size divisible by 4 (for example 16 or 32)")
    sizes = ImageSizes.quick() if quick else ImageSizes()
    embedded = images is None
    staged = StagedDirectory(
        out,
        "bench images",
        {"--images": images},
        overwrite=overwrite,
        legacy=("results.json", "table.md", "samples.png"),
    )
    with staged, tempfile.TemporaryDirectory() as scratch, thread_limits(threads):
        if embedded:
            from flowpheno.simulate.digits import make_digit_individuals

            images = Path(scratch) / "digits"
            make_digit_individuals(images, size=size)
        image_set = read_image_folder(images, size, grayscale or embedded)
        splits = split_images(image_set)
        seed_list = list(range(1 if quick else seeds))
        started = time.perf_counter()
        records, flows = methods_by_seeds(
            chosen, seed_list, lambda method, seed: run_method(method, splits, seed, sizes, device), progress
        )
        wall = time.perf_counter() - started
        command = command_line("flowpheno bench images", argv, skip=3)
        with write_errors(out):  # an error names --out, not the staging folder
            write_results(
                staged.path,
                {
                    "table.md": table(records, splits, command, wall, embedded),
                    "results.json": {
                        "command": command,
                        "sizes": sizes_dict(sizes),
                        "image_size": size,
                        "data": splits.counts,
                        "embedded_data": embedded,
                        "device": device,
                        "versions": package_versions(),
                        "wall_seconds": wall,
                        "runs": records,
                    },
                },
            )
            sample_figure(flows, splits, staged.path / "samples.png")
        staged.commit()
    return f"wrote {out}/table.md, results.json, samples.png ({len(records)} runs, {wall / 60:.1f} min)"
