"""Copy a gallery to another place, any backend to any backend (``arcface gallery copy SRC DST``).

- **Same contract or nothing**: the destination is created bound to the source's contract; one bound to another
  contract is refused (:class:`GalleryContractError`) before anything is written.
- **Resumable without a state file**: identities are copied in the source's id order, each with its name and
  metadata, then its faces (embedding, source) in the source's face order, in batches. The destination's identities,
  in their id order, are therefore always a prefix of the source's; a run that stopped anywhere is resumed by pairing
  the two lists, adding the faces an identity still lacks and then the identities not yet there. A destination that
  holds anything else is refused (copy into an empty gallery).
- **Verified**: at the end the identity and face counts must be equal, and the same searches (a sample of the
  source's own faces as queries, ``k`` identities each) must give the same identities (through the id pairing) with
  the same similarities (within 1e-4) in the same order. An approximate destination index may disagree on a large
  gallery: the report says how many differ.
- New ids and creation times: the destination gives its own ids; the pairing (source id -> copy id) is in the
  report. The source should not change during the copy (what changes after it was read is not copied).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from arcface.gallery.base import GalleryStore, GalleryTarget, open_gallery
from arcface.gallery.rules import GalleryError

__all__ = ["CopyReport", "copy_gallery"]

SIMILARITY_TOLERANCE = 1e-4


@dataclass
class CopyReport:
    """What :func:`copy_gallery` did and found.

    Attributes:
        identities, faces: the source's counts.
        copied_identities, copied_faces: what this run wrote.
        resumed_identities: identities that were already in the destination (an earlier run).
        counts_equal: the destination has as many identities and faces as the source.
        sample, identical: searches compared, and how many gave the same answer.
        differences: the first few searches that differed, described.
        id_map: source identity id -> destination identity id.
        contract_id: the contract both are bound to.
    """

    identities: int = 0
    faces: int = 0
    copied_identities: int = 0
    copied_faces: int = 0
    resumed_identities: int = 0
    counts_equal: bool = False
    sample: int = 0
    identical: int = 0
    differences: list[str] = field(default_factory=list)
    id_map: dict[int, int] = field(default_factory=dict)
    contract_id: str = ""

    @property
    def verified(self) -> bool:
        """Counts equal and every sampled search identical."""
        return self.counts_equal and self.identical == self.sample


def copy_gallery(
    source: str | os.PathLike | GalleryTarget,
    destination: str | os.PathLike | GalleryTarget,
    *,
    index: str = "exact",
    sample: int = 100,
    k: int = 5,
    batch: int = 500,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> CopyReport:
    """Copy ``source`` into ``destination`` (see the module docstring), then verify.

    Args:
        source, destination: folders or URIs (:mod:`arcface.gallery.base`).
        index: the destination's search index (for Milvus: chosen now, when it is created).
        sample: source faces used as search queries for the verification (0: counts only).
        k: identities per verification search.
        batch: faces per write.
        seed: which faces are sampled.
        progress: called with (identities done, identities in all) after each identity.

    Raises:
        FileNotFoundError: no gallery at ``source``.
        GalleryContractError: ``destination`` is bound to another contract.
        GalleryError: the same gallery twice, or a destination that holds something other than (a part of) this copy.
    """
    src_t, dst_t = GalleryTarget.parse(source), GalleryTarget.parse(destination)
    if _same(src_t, dst_t):
        raise GalleryError(f"{src_t.display} is both the source and the destination")
    report = CopyReport()
    with open_gallery(src_t, create=False) as src:
        report.contract_id = src.contract.id
        with open_gallery(dst_t, src.contract, index=index) as dst:
            people = src.list_identities()
            there = dst.list_identities()
            report.identities, report.faces = len(people), sum(p.faces for p in people)
            if len(there) > len(people) or any(
                (a.name, a.metadata) != (b.name, b.metadata) for a, b in zip(people, there, strict=False)
            ):
                raise GalleryError(
                    f"{dst_t.display} holds identities that are not a copy of {src_t.display}'s (it has "
                    f"{len(there)}); copy into an empty gallery, or resume the copy that made it"
                )
            report.id_map = {a.id: b.id for a, b in zip(people, there, strict=False)}
            report.resumed_identities = len(there)
            have = {b.id: b.faces for b in there}
            for n, person in enumerate(people, start=1):
                target = report.id_map.get(person.id)
                if target is None:
                    target = dst.add_identity(person.name, person.metadata)
                    report.id_map[person.id] = target
                    report.copied_identities += 1
                faces = src.list_faces(person.id)
                done = have.get(target, 0)
                if done > len(faces):
                    raise GalleryError(f"{dst_t.display}: identity {target} has more faces than the source's "
                                       f"{person.id}; not a copy of it")  # fmt: skip
                todo = faces[done:]
                for start in range(0, len(todo), batch):
                    chunk = todo[start : start + batch]
                    x = src.get_embeddings([f.id for f in chunk])  # (B, D)
                    dst.add_faces(target, x, src.contract.id, [f.source for f in chunk])
                    report.copied_faces += len(chunk)
                if progress is not None:
                    progress(n, len(people))
            report.counts_equal = (dst.count_identities(), dst.count()) == (src.count_identities(), src.count())
            _verify(src, dst, report, sample, k, seed)
    return report


def _verify(src: GalleryStore, dst: GalleryStore, report: CopyReport, sample: int, k: int, seed: int) -> None:
    """Search both with a sample of the source's faces; count identical answers."""
    faces = [f.id for f in src.list_faces()]
    if not faces or sample <= 0:
        return
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(faces), min(sample, len(faces)), replace=False).tolist())
    queries = src.get_embeddings([faces[i] for i in chosen])
    report.sample = len(chosen)
    for face, q in zip((faces[i] for i in chosen), queries, strict=True):
        a, b = src.search(q, k), dst.search(q, k)
        mapped = [report.id_map.get(m.identity_id) for m in a]
        same = [m.identity_id for m in b] == mapped and all(
            abs(x.similarity - y.similarity) <= SIMILARITY_TOLERANCE for x, y in zip(a, b, strict=True)
        )
        if same:
            report.identical += 1
        elif len(report.differences) < 5:
            report.differences.append(
                f"face {face}: source {[(m.identity_id, round(m.similarity, 4)) for m in a]} vs copy "
                f"{[(m.identity_id, round(m.similarity, 4)) for m in b]}"
            )


def _same(a: GalleryTarget, b: GalleryTarget) -> bool:
    if a.kind != b.kind:
        return False
    if a.path is not None and b.path is not None:
        return os.path.abspath(a.path) == os.path.abspath(b.path) and a.name == b.name
    return (a.connect, a.database, a.name) == (b.connect, b.database, b.name)
