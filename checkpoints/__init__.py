"""Trained checkpoints shipped with mvclam (installed as ``mvclam.checkpoints``).

``mvclam-small-chebi/`` is the default model of every job: see its README.md (the model card).
"""
