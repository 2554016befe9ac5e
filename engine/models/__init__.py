"""MV-CLAM models: the 2D (MAT) and 3D (Uni-Mol) encoders, the MQ-Former and the full model."""

from mvclam.engine.models.checkpoint import CheckpointError
from mvclam.engine.models.config import MVCLAMConfig, load_config
from mvclam.engine.models.mvclam import MVCLAM, MoleculeEmbeddings, MVCLAMLosses

__all__ = ["MVCLAM", "CheckpointError", "MVCLAMConfig", "MVCLAMLosses", "MoleculeEmbeddings", "load_config"]
