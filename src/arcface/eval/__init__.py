"""Evaluation as the papers do it: verification sets, the 10-fold protocol, ROC plots, the trainer's hook.

    >>> from arcface.eval import read_lfw_pairs, evaluate_pair_set, EvalCache
    >>> from arcface import load_model
    >>> pairs = read_lfw_pairs("lfw/pairs.txt", "lfw/lfw-deepfunneled")
    >>> report = evaluate_pair_set(pairs, load_model("default", flip=True), cache=EvalCache())
    >>> report["accuracy"], report["accuracy_std"]
"""

from arcface.eval.datasets import BinFormatError, PairSet, read_bin, read_csv_pairs, read_lfw_pairs
from arcface.eval.metrics import fold_accuracies, roc_metrics
from arcface.eval.pipeline import EvalCache, embed_pair_set
from arcface.eval.verification import evaluate_pair_set, recompute_accuracy, verification_report

__all__ = [
    "BinFormatError",
    "EvalCache",
    "PairSet",
    "embed_pair_set",
    "evaluate_pair_set",
    "fold_accuracies",
    "read_bin",
    "read_csv_pairs",
    "read_lfw_pairs",
    "recompute_accuracy",
    "roc_metrics",
    "verification_report",
]
