"""Find and run the external binaries (GEMMA, PLINK 1.9) with errors a user can act on."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from flowpheno.errors import FlowphenoError
from flowpheno.threads import available_cpus

PACKAGES = {"gemma": "gemma", "plink1.9": "plink1.9"}
ALTERNATIVE_NAMES = {"plink1.9": ["plink1.9", "plink"], "gemma": ["gemma"]}


def require(tool: str) -> str:
    """Path of ``tool`` (``gemma``, or ``plink1.9``, also found as ``plink``) on PATH.

    Raises:
        FlowphenoError: the binary is not on PATH, naming the Debian package that provides it.
    """
    for name in ALTERNATIVE_NAMES.get(tool, [tool]):
        found = shutil.which(name)
        if found:
            return found
    raise FlowphenoError(
        f"{tool} not found on PATH: install the Debian package {PACKAGES.get(tool, tool)} (apt-get install "
        f"{PACKAGES.get(tool, tool)})"
    )


def run_logged(
    command: list[str], log: Path, cwd: Path | None = None, tail_lines: int = 15, log_kept: bool = True
) -> None:
    """Run ``command`` with stdout and stderr in ``log``; on failure show the log's tail.

    ``log_kept``: False when ``log`` lies in a folder that the failure removes (a scratch or
    staging folder): the error then shows the tail without naming a file that will not exist.

    The tool gets the CPUs this process may use (:func:`flowpheno.threads.available_cpus`:
    its affinity, or ``SLURM_CPUS_PER_TASK`` / ``OMP_NUM_THREADS`` when smaller, which the
    ``--threads`` of the ``flowpheno gwas`` commands sets): GEMMA through the BLAS/OpenMP
    thread variables, PLINK 1.9 through its ``--threads``.

    Raises:
        FlowphenoError: the tool exits non-zero or its log holds an error mark (``ERROR:``,
            ``error!``, ``FAILED:``), with the log's last ``tail_lines`` lines.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    threads = str(available_cpus())
    env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    if Path(command[0]).name.startswith("plink"):
        command = [*command, "--threads", threads]
    with log.open("w") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd, check=False, env=env)
    text = log.read_text(errors="replace")
    failed = result.returncode != 0 or any(mark in text for mark in ("ERROR:", "error!", "FAILED:"))
    if failed:
        tail = "\n".join(line for line in text.splitlines()[-tail_lines:] if line.strip() and "%" not in line)
        where = f"log {log}" if log_kept else "its log is not kept"
        raise FlowphenoError(f"{Path(command[0]).name} failed (exit {result.returncode}; {where}):\n{tail}")
