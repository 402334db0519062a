"""Step 1: align all of LFW (the library's batch aligner, cached) and pack the training people to RecordIO."""

from __future__ import annotations

import json
import time
from typing import Any

from arcface.batch.align import align_tree
from arcface.data.pack import pack_list
from tools.loss_table.setup import Setup, held_out_people, images_dir


def prepare_data(setup: Setup, input_size: int) -> dict[str, Any]:
    """Align all of LFW (cached) and pack the training people at ``input_size`` and at 112."""
    images = images_dir(setup.lfw)
    aligned = setup.work / "aligned"
    t0 = time.perf_counter()
    align_tree(images, aligned, workers=setup.workers or 1, progress_bar=setup.progress)
    t_align = time.perf_counter() - t0
    held_out = held_out_people(setup.lfw)
    people = sorted(p.name for p in aligned.iterdir() if p.is_dir() and p.name not in held_out)
    lines, n_classes = [], 0
    for person in people:
        crops = sorted((aligned / person).glob("*.png"))
        if not crops:
            continue
        lines += [f"{c.relative_to(aligned)}\t{n_classes}" for c in crops]
        n_classes += 1
    list_file = setup.work / "train.lst"
    list_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    packs = {}
    for size in sorted({input_size, 112}):
        prefix = setup.work / f"lfw_train_{size}"
        meta = prefix.with_suffix(".json")
        want = {"images": len(lines), "classes": n_classes, "size": size}
        if not (meta.is_file() and json.loads(meta.read_text()) == want and prefix.with_suffix(".rec").is_file()):
            n, c = pack_list(list_file, prefix, root=aligned, image_size=size, num_classes=n_classes)
            if (n, c) != (len(lines), n_classes):
                raise RuntimeError(f"packing {prefix}: wrote {n} images of {c} classes, expected {want}")
            meta.write_text(json.dumps(want))
        packs[size] = str(prefix.with_suffix(".rec"))
    report = json.loads((aligned / "align_report.json").read_text())
    return {
        "aligned": str(aligned),
        "train_people": n_classes,
        "train_images": len(lines),
        "held_out_people": len(held_out),
        "packs": packs,
        "align_seconds": t_align,
        "align_report": {k: v for k, v in report.items() if not isinstance(v, (list, dict))},
    }
