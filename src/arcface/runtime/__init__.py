"""Bottom helpers every layer may use: mixed precision (:mod:`.amp`), the CPU allocator setting
(:mod:`.memory`) and progress reports (:mod:`.progress`).

Nothing here imports another part of arcface (the bottom layer, with :mod:`arcface.io`). This package imports none
of its submodules: import them directly.
"""
