"""Shared bench helpers: the machine description, a printed table, and the JSON result file."""

from __future__ import annotations

import json
import time
from pathlib import Path

from arcface.runtime.machine import machine_info

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, str | int]:
    """CPU model and flags, core count and library versions, for every result table (and torch's threads)."""
    info = machine_info()
    try:
        import torch

        info["threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def print_table(title: str, header: list[str], rows: list[list[object]]) -> str:
    """Print (and return) a markdown table."""
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(f"{x:.3g}" if isinstance(x, float) else str(x) for x in r) + " |")
    m = machine()
    lines += ["", f"machine: {m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')}, "
              f"onnxruntime {m.get('onnxruntime', '-')}; {time.strftime('%Y-%m-%d')}"]
    text = "\n".join(lines)
    print(text)
    return text


def save(name: str, payload: dict) -> Path:
    """Write ``bench/results/NAME.json`` with the machine and date added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
