"""Bottom input/output helpers every layer may use: the one image loader (:mod:`.images`) and file helpers
(:mod:`.files`: image suffixes, finding images, atomic writes). Nothing here imports another part of arcface.
"""
