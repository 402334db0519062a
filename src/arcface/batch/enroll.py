"""Enrol a folder of people into a gallery (``arcface gallery enroll``), on any engine.

``ROOT/person/photo.jpg``: the folder name is the identity's name (a new identity, or the existing one of that name);
the main face of each photo is enrolled with the source ``person/photo.jpg``. A photo already enrolled for that
person (same source) is skipped before any work; an unreadable photo or one without a face is recorded and skipped.
A folder whose name the gallery would refuse as an identity name (control or bidirectional characters, too long) is
skipped with its reason, before any work.

The engine computes the embeddings (rows in input order, so each person's photos come together); this process
enrols them, one transaction per person, so the gallery has one writer whatever the engine. With the Ray engine the
enrolment starts once every shard is written: a driver killed before then leaves the gallery as it was, and the same
command resumes from the shards.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from arcface.batch.engines import EngineOptions, JobReport, model_contract, run_job
from arcface.batch.failures import Failure
from arcface.batch.jobs import Item, JobSettings, Row, model_facts
from arcface.gallery import Gallery, check_name
from arcface.io.files import find_images_walk, is_image_name
from arcface.io.walk import FilePolicy, Skipped

__all__ = ["EnrollResult", "enroll_folder", "people_photos"]


@dataclass
class EnrollResult:
    """What :func:`enroll_folder` did.

    Attributes:
        photos: photos found in the person folders.
        enrolled: faces enrolled by this run.
        skipped: photos already enrolled for their person (not computed again).
        new_identities: names of the identities this run created.
        failures: photos that could not be enrolled, with their reasons.
        identities: identities in the gallery afterwards.
        faces: faces in the gallery afterwards.
        contract_id: the model contract's id.
        loose: images directly in the root folder (ignored: they belong to no person).
        skipped_files: how many of ``failures`` the safe walker skipped before any work (they come first: FIFOs,
            links leading out of the root, oversized files; see :mod:`arcface.io.walk`).
        refused: ``(folder name, reason)`` of the person folders skipped because the gallery refuses the name.
        job: what the engine did.
    """

    photos: int = 0
    enrolled: int = 0
    skipped: int = 0
    new_identities: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    identities: int = 0
    faces: int = 0
    contract_id: str = ""
    loose: list[Path] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    skipped_files: int = 0
    job: JobReport = field(default_factory=JobReport)


def people_photos(
    root: str | os.PathLike,
    policy: FilePolicy | None = None,
) -> tuple[list[tuple[str, Path]], list[Path], list[tuple[str, str]], list[Skipped]]:
    """``(person, photo)`` for every photo of every person folder of ``root`` (sorted), the loose images, the
    ``(folder name, reason)`` of the folders whose name the gallery refuses (:func:`~arcface.gallery.check_name`),
    and the files the safe walker skipped (:mod:`arcface.io.walk`; links must stay inside ``root``, person folders
    that are links leading out included, unless ``policy`` follows links).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no person folder holds an image.
    """
    root = Path(root)
    policy = policy or FilePolicy()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (enroll takes a folder with one sub-folder per person)")
    base = os.path.realpath(root)
    people, refused, skipped = [], [], []
    for d in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        try:
            check_name(d.name)
        except ValueError as e:
            refused.append((d.name, str(e)))
            continue
        target = os.path.realpath(d)
        if d.is_symlink() and not policy.follow_links and os.path.commonpath([base, target]) != base:
            message = f"{d}: a link to a folder outside {base} (pass --follow-links to follow it)"
            skipped.append(Skipped(str(d), "link_outside", message))
            continue
        people.append(d)
    photos = []
    for person in people:
        walk = find_images_walk(person, policy=policy, within=person if policy.follow_links else root)
        photos += [(person.name, path) for path in walk.files]
        skipped += walk.skipped
    loose = sorted(f for f in root.iterdir() if f.is_file() and is_image_name(f))
    if not photos:
        raise ValueError(f"{root}: no person sub-folder with images")
    return photos, loose, refused, skipped


def enroll_folder(
    root: str | os.PathLike,
    gallery: str | os.PathLike,
    settings: JobSettings,
    options: EngineOptions | None = None,
    *,
    index: str = "exact",
    progress_bar: bool = True,
    policy: FilePolicy | None = None,
) -> EnrollResult:
    """Enrol the main face of every photo of each person folder of ``root`` into ``gallery`` (see the module).

    Args:
        root: one sub-folder per person.
        gallery: the gallery (created, bound to the model's contract on its first face).
        settings: an ``enroll`` job's settings.
        options: the engine (default: local, in this process).
        index: the gallery's search index kind.
        progress_bar: report progress on stderr.
        policy: which files are read (:class:`~arcface.io.walk.FilePolicy`: links leading out, size cap); FIFOs,
            sockets and devices never are. Skipped files are the first failures.

    Raises:
        FileNotFoundError, ValueError: see :func:`people_photos`; a bad model.
        GalleryContractError: the gallery is bound to another model.
        JobError: the engine cannot run.
    """
    if settings.kind != "enroll":
        raise ValueError(f"enroll_folder needs an enroll job's settings, got {settings.kind!r}")
    root = Path(root)
    photos, loose, refused, skipped = people_photos(root, policy)
    options = options or EngineOptions()
    contract = model_contract(settings, options)
    result = EnrollResult(photos=len(photos) + len(skipped), contract_id=contract.id, loose=loose, refused=refused,
                          failures=[Failure(s.path, s.reason, s.message) for s in skipped],
                          skipped_files=len(skipped))  # fmt: skip
    with Gallery.open(gallery, contract, index=index) as g:
        enrolled: dict[str, tuple[int | None, set[str]]] = {}  # person -> (identity id, sources enrolled)
        for person in dict.fromkeys(p for p, _ in photos):
            found = g.find_identities(person)
            ident = found[0].id if found else None
            enrolled[person] = (ident, {f.source for f in g.list_faces(ident)} if ident is not None else set())
        todo = [Item(str(path), person) for person, path in photos
                if _source(root, person, str(path)) not in enrolled[person][1]]  # fmt: skip
        result.skipped = len(photos) - len(todo)
        if todo:
            rows = run_job(settings, todo, options, plan_extra=model_facts(contract), report=result.job,
                           progress_bar=progress_bar)  # fmt: skip
            for person, group in _by_person(rows, result.failures):
                ident = enrolled[person][0]
                if ident is None:
                    ident = g.add_identity(person)
                    enrolled[person] = (ident, set())
                    result.new_identities.append(person)
                embeddings = np.stack([r.embedding for r in group])  # (N, D)
                g.add_faces(ident, embeddings, contract.id, [_source(root, person, r.path) for r in group])
                result.enrolled += len(group)
        result.identities, result.faces = g.count_identities(), g.count()
    return result


def _source(root: Path, person: str, path: str) -> str:
    """The face's source name in the gallery: ``person/relative/path``."""
    return f"{person}/{Path(path).relative_to(root / person).as_posix()}"


def _by_person(rows: Iterable[Row], failures: list[Failure]) -> Iterable[tuple[str, list[Row]]]:
    """Consecutive rows of one person, failures set aside (rows come in input order: by person)."""
    person: str | None = None
    group: list[Row] = []
    for row in rows:
        if row.failure is not None:
            failures.append(row.failure)
            continue
        if row.identity != person:
            if group:
                yield person, group  # type: ignore[misc]
            person, group = row.identity, []
        group.append(row)
    if group:
        yield person, group  # type: ignore[misc]
