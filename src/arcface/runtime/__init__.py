"""Bottom helpers every layer may use: mixed precision (:mod:`.amp`), the CPU allocator setting
(:mod:`.memory`) and progress reports (:mod:`.progress`).

Nothing here imports another part of arcface. Import the submodules directly; this package imports none of
them, so ``import arcface.runtime.progress`` does not pull in torch.
"""
