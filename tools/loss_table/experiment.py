"""The ArcFace paper's loss comparison (Table 2) at small scale, on LFW, from one command (``make paper-table``).

From a clean work folder:

1. **Data** (:mod:`.data`). Every LFW photo is detected and aligned by the library's batch aligner
   (:func:`arcface.batch.align.align_tree`: MTCNN, the 112x112 ArcFace template; resumable, so a second run reuses
   it). The training identities are all LFW people who do not appear in View 1's test pairs
   (``pairsDevTest.txt``); their crops are packed into RecordIO by our writer (:func:`arcface.data.pack.pack_list`)
   at the model's input size and at 112 for the fine-tuning row.
2. **Rows** (:mod:`.runs`). ``arcface train`` in a child process with one recipe (``configs/lfw_small_r18.yaml``)
   per loss: the same backbone, schedule, seed and number of steps; only ``head.kind`` / ``head.params`` change.
   The best rows are then repeated with more seeds for the spread.
3. **Evaluation** (:mod:`.evaluate`). LFW View 1: the threshold that maximises accuracy on ``pairsDevTrain.txt``
   (1,100 pairs) is applied to ``pairsDevTest.txt`` (500 + 500 pairs, people disjoint from training); flip-test
   fusion; ROC AUC on the test pairs.
4. **Fine-tuning** (:mod:`.runs`). The bundled default model is fine-tuned on the same people with ArcFace
   (``arcface train --init-from``) and evaluated on LFW View 2 (10 official folds) and View 1 before and
   after. View 2 shares people with the training set, so its "after" figure is optimistic; View 1 test is the
   clean comparison.
5. **Output** (:mod:`.report`). ``bench/results/loss_comparison.json`` (``results`` rows and ``setup``), the PNGs of
   the loss curves and of the accuracy per loss, a markdown table, and the README section between the
   ``<!-- loss-table:begin -->`` / ``<!-- loss-table:end -->`` markers.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from arcface import __version__
from arcface.engine.config import load_config
from arcface.runtime.machine import machine_info
from tools.loss_table.data import prepare_data
from tools.loss_table.report import README_BEGIN, README_END, markdown, plots, summary, update_readme
from tools.loss_table.runs import REUSED, run_row, train_rows
from tools.loss_table.setup import HEADLINE, REPO, ROWS, Setup, slug


def run_loss_table(setup: Setup, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole experiment (see the module docstring) and write its outputs; returns the payload."""
    t_start = time.perf_counter()
    REUSED.clear()
    if setup.threads > 0:  # evaluation runs in this process (training in child processes)
        torch.set_num_threads(setup.threads)
    setup.work.mkdir(parents=True, exist_ok=True)
    setup.out.mkdir(parents=True, exist_ok=True)
    base = load_config(setup.config)
    input_size = int(base.model.options.get("input_size", 112))
    rows = [r for r in ROWS if not setup.rows or r.name in setup.rows or slug(r.name) in setup.rows]
    if setup.rows and len(rows) != len(setup.rows):
        known = ", ".join(slug(r.name) for r in ROWS)
        raise ValueError(f"--rows: unknown row in {list(setup.rows)}; known: {known}")

    echo("1/4 aligning LFW with `arcface align` and packing the training people ...")
    data = prepare_data(setup, input_size)
    echo(f"    {data['train_images']:,} photos of {data['train_people']:,} people for training "
         f"({data['held_out_people']} View 1 test people held out)")  # fmt: skip

    echo(f"2/4 training {len(rows)} rows x {setup.steps} steps (seed 0) ...")
    secs = train_rows([(r, 0) for r in rows], setup, data, input_size)
    results = [run_row(r, 0, setup, data, input_size, t) for r, t in zip(rows, secs, strict=True)]
    for r in results:
        echo(f"    {r['loss']:<26} {100 * r['accuracy']:6.2f}%  AUC {r['auc']:.4f}  {r['seconds']:.0f} s")
    top = {r["loss"] for r in sorted(results, key=lambda r: -r["accuracy"])[: setup.seed_rows]}
    # the best rows, plus the paper's headline comparison (arcface against softmax), get the extra seeds
    extra = [x for x in rows if x.name in top or x.name in HEADLINE]
    if setup.seeds > 1 and extra:
        echo(f"3/4 more seeds ({setup.seeds - 1} each) for the top rows: {', '.join(r.name for r in extra)} ...")
        jobs = [(r, seed) for seed in range(1, setup.seeds) for r in extra]
        secs = train_rows(jobs, setup, data, input_size)
        results += [run_row(r, seed, setup, data, input_size, t) for (r, seed), t in zip(jobs, secs, strict=True)]

    finetune = None
    if setup.finetune:
        echo(f"4/4 fine-tuning the default model with arcface ({setup.finetune_steps} steps) ...")
        finetune = finetune(setup, data)

    m = base.model
    payload: dict[str, Any] = {
        "results": results,
        "summary": summary(results, [r.name for r in rows]),
        "finetune": finetune,
        "setup": {
            "backbone": f"{m.name} x{m.options.get('width_mult', 1)} width, {input_size}x{input_size} input, "
            f"{m.num_features}-D",
            "config": str(setup.config.relative_to(REPO) if setup.config.is_relative_to(REPO) else setup.config),
            "steps": setup.steps,
            "batch_size": base.data.batch_size,
            "epochs": setup.steps * base.data.batch_size / data["train_images"],
            "lr": f"{base.optim.lr} (momentum {base.optim.momentum}, wd {base.optim.weight_decay}), "
            f"warm-up {max(1, setup.steps // 20)} steps, /10 at 60% and 85%, batch {base.data.batch_size}",
            "precision": base.train.precision,
            "jobs": setup.jobs,
            "threads_per_job": setup.threads_per_job,
            "seeds": setup.seeds,
            "seed_rows": setup.seed_rows,
            "evaluation": "LFW View 1: threshold maximising accuracy on pairsDevTrain (1,100 pairs), accuracy on "
            "pairsDevTest (500 same + 500 different, people held out of training); flip-test fusion; ROC AUC "
            "on pairsDevTest",
            "data": {k: v for k, v in data.items() if k != "packs"},
            "train_people": data["train_people"],
            "train_images": data["train_images"],
            "version": __version__,
            "machine": machine_info(),
            "date": time.strftime("%Y-%m-%d"),
            "total_seconds": 0.0,
        },
    }
    payload["setup"]["total_seconds"] = round(time.perf_counter() - t_start, 1)
    payload["setup"]["runs_reused"] = len(REUSED)
    previous = setup.out / "loss_comparison.json"
    if REUSED and previous.is_file():  # keep the figure of the last run that trained everything
        prev = json.loads(previous.read_text()).get("setup", {})
        clean = prev.get("clean_run_seconds") or (prev.get("total_seconds") if not prev.get("runs_reused") else None)
        payload["setup"]["clean_run_seconds"] = clean
    elif not REUSED:
        payload["setup"]["clean_run_seconds"] = payload["setup"]["total_seconds"]
    payload["plots"] = plots(payload, setup.out)
    table = markdown(payload)
    (setup.out / "loss_comparison.md").write_text(table, encoding="utf-8")
    tmp = setup.out / "loss_comparison.json.tmp"
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, setup.out / "loss_comparison.json")
    if setup.readme is not None and not update_readme(setup.readme, table):
        echo(f"note: {setup.readme} has no {README_BEGIN} / {README_END} markers; table not inserted")
    echo(table)
    return payload
