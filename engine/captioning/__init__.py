"""Molecule captioning (MV-CLAM stage 2): soft-prompted, LoRA-tuned SmolLM2 and its generation backends.

    captioning = load_captioning("ckpt")                      # MV-CLAM + captioner (+ transformers backend)
    results = captioning.caption_smiles(["CC(=O)Oc1ccccc1C(=O)O"])
    captioning.backend = VLLMBackend.from_captioner(captioning.captioner)   # vLLM (CPU or GPU) instead

Training (stage 2): ``MoleculeCaptioner.loss_from_views`` / ``forward`` and ``trainable_parameters``.
"""

from mvclam.engine.captioning.backends import (
    CaptionBackend,
    GenerationSettings,
    TransformersBackend,
    VLLMBackend,
    export_merged_llm,
    llm_cache_root,
    merged_llm_dir,
    validate_prompt_embeds,
    vllm_engine_options,
)
from mvclam.engine.captioning.captioner import UNTRAINED_WARNING, Captioner, CaptionResult, load_captioning
from mvclam.engine.captioning.checkpoint import (
    CaptionerCheckpointError,
    has_captioner,
    load_captioner,
    save_captioner,
)
from mvclam.engine.captioning.llm import LLMSource, LoadedLLM, load_llm
from mvclam.engine.captioning.model import (
    IGNORE_INDEX,
    CaptionerConfig,
    MoleculeCaptioner,
    TrainingInputs,
    molecule_query_states,
)

__all__ = [
    "IGNORE_INDEX",
    "UNTRAINED_WARNING",
    "CaptionBackend",
    "CaptionResult",
    "Captioner",
    "CaptionerCheckpointError",
    "CaptionerConfig",
    "GenerationSettings",
    "LLMSource",
    "LoadedLLM",
    "MoleculeCaptioner",
    "TrainingInputs",
    "TransformersBackend",
    "VLLMBackend",
    "export_merged_llm",
    "has_captioner",
    "llm_cache_root",
    "load_captioner",
    "load_captioning",
    "load_llm",
    "merged_llm_dir",
    "molecule_query_states",
    "save_captioner",
    "validate_prompt_embeds",
    "vllm_engine_options",
]
