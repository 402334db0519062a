"""Batch jobs over many images: the same per-image work of the face pipeline, over local worker processes.

* :func:`arcface.batch.align.align_tree`: a tree of photos -> aligned crops (a training set), resumable.
* :mod:`arcface.batch.failures`: how a bad item is recorded (the job goes on).
"""
