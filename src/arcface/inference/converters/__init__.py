"""Importers of the seed systems' models into our backbones, each saved with the original's contract.

- :mod:`.mxnet`: insightface's MXNet model zoo (``PREFIX-symbol.json`` + ``PREFIX-NNNN.params``), read
  without MXNet.
- :mod:`.treb1en`: TreB1eN's InsightFace_Pytorch state dicts (IR / IR-SE 50/100/152, MobileFaceNet).
- :mod:`.evolve`: face.evoLVe's state dicts (IR / IR-SE 50/101/152, ResNet 50/101/152, MobileFaceNet).
- :mod:`.tflite`: the MobileFaceNet ``.tflite`` (sirius-ai lineage) the bundled default model comes from.

Each ``convert_*`` returns ``(module, contract)`` and, given ``out``, writes a ``.safetensors`` model file
that :func:`arcface.load_model` (and so every model consumer) reads. Failures raise :class:`ConversionError` (a
``ValueError``) with one line naming the file and the layer or key.
"""

from __future__ import annotations

from arcface.inference.converters._common import ConversionError
from arcface.inference.converters.evolve import EVOLVE_ARCHS, convert_evolve
from arcface.inference.converters.mxnet import convert_mxnet
from arcface.inference.converters.tflite import convert_tflite
from arcface.inference.converters.treb1en import TREB1EN_ARCHS, convert_treb1en

__all__ = [
    "EVOLVE_ARCHS",
    "TREB1EN_ARCHS",
    "ConversionError",
    "convert_evolve",
    "convert_mxnet",
    "convert_tflite",
    "convert_treb1en",
]
