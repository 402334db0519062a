"""Bottom helpers every layer may use: mixed precision (:mod:`.amp`), the CPU allocator setting
(:mod:`.memory`), progress reports (:mod:`.progress`), the CPU thread policy (:mod:`.threads`), the process pool
(:mod:`.workers`), the machine description (:mod:`.machine`) and reading untrusted files (:mod:`.untrusted`).

Nothing here imports another part of arcface (the bottom layer, with :mod:`arcface.io`). This package imports none
of its submodules: import them directly.
"""
