"""Embed the main face of many images into one ``.npz`` (``arcface embed``), on any engine.

The ``.npz`` (written atomically, loadable with ``np.load(F)`` without pickle) holds:

==============  ==============================================================================
``paths``       (N,) str, the images embedded, in input order
``embeddings``  (N, D) float32, unit rows
``contract``    () str, the model contract as JSON (``ModelContract.from_json``)
``errors``      (M, 3) str, one row per skipped image: path, reason code, message
``options``     () str, JSON: flip, aligned, detector
==============  ==============================================================================

With the Ray engine the rows come from the job's Parquet shards, read one at a time; the file is the same.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from arcface.batch.engines import EngineOptions, JobReport, model_contract, run_job
from arcface.batch.failures import Failure
from arcface.batch.jobs import Item, JobSettings, model_facts
from arcface.inference.contract import ModelContract
from arcface.io.files import atomic_path

__all__ = ["EmbedResult", "embed_images", "write_npz"]


@dataclass
class EmbedResult:
    """What :func:`embed_images` did.

    Attributes:
        out: the ``.npz`` written.
        images: inputs (with the files skipped before any work).
        embedded: images embedded.
        failures: images skipped, with their reasons (first the files the walker skipped, then the job's).
        contract: the model's contract.
        job: what the engine did (shards, actors).
    """

    out: Path
    images: int
    embedded: int
    failures: list[Failure]
    contract: ModelContract
    job: JobReport = field(default_factory=JobReport)


def embed_images(
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    settings: JobSettings,
    options: EngineOptions | None = None,
    *,
    progress_bar: bool = True,
    skipped: Sequence[Failure] = (),
) -> EmbedResult:
    """Embed the main face of each image (each aligned crop with ``settings.aligned``) and write ``out``.

    Args:
        sources: the images.
        out: the ``.npz`` to write.
        settings: an ``embed`` job's settings (model, detector, flip, aligned, batch size).
        options: the engine (default: local, in this process).
        progress_bar: report progress on stderr.
        skipped: input files left out before any work (the safe walker's FIFOs, links leading out, oversized
            files): recorded in the ``.npz``'s errors array with the job's own failures.

    Raises:
        ValueError: ``out`` is not an ``.npz`` name, or ``settings`` are not an embed job's.
        FileNotFoundError: an unknown model.
        JobError: the engine cannot run (see :func:`~arcface.batch.engines.run_job`).
    """
    if settings.kind != "embed":
        raise ValueError(f"embed_images needs an embed job's settings, got {settings.kind!r}")
    if not str(out).lower().endswith(".npz"):
        raise ValueError(f"--out {out}: the output must be an .npz file")
    options = options or EngineOptions()
    contract = model_contract(settings, options)
    items = [Item(os.fspath(p)) for p in sources]
    report = JobReport()
    rows = run_job(settings, items, options, plan_extra=model_facts(contract), report=report,
                   progress_bar=progress_bar)  # fmt: skip
    embeddings = np.zeros((len(items), contract.embedding_size), np.float32)
    paths: list[str] = []
    failures: list[Failure] = list(skipped)
    for row in rows:
        if row.failure is not None:
            failures.append(row.failure)
            continue
        embeddings[len(paths)] = row.embedding
        paths.append(row.path)
    options_doc = {"flip": settings.flip, "aligned": settings.aligned, "detector": settings.detector}
    write_npz(out, paths, embeddings[: len(paths)], contract, failures, options_doc)
    return EmbedResult(Path(out), len(items) + len(skipped), len(paths), failures, contract, report)


def write_npz(
    out: str | os.PathLike,
    paths: Sequence[str],
    embeddings: np.ndarray,
    contract: ModelContract,
    failures: Sequence[Failure],
    options: dict,
) -> None:
    """Write the ``.npz`` of the module's table, atomically."""
    errors = np.array([[f.path, f.reason, f.message] for f in failures], dtype=str).reshape(-1, 3)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            paths=np.array(list(paths), dtype=str),
            embeddings=np.ascontiguousarray(embeddings, dtype=np.float32),
            contract=np.array(contract.to_json()),
            errors=errors,
            options=np.array(json.dumps(options)),
        )
