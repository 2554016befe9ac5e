"""Fused forward kernels for MV-CLAM with torch references (the definition of correctness).

Model and search code call the public functions below; each decides once, through
:func:`kernels.dispatch.use_triton`, whether to run the Triton kernel (CUDA, no autograd) or the
torch reference. Importing this package does not import Triton.
"""

if __name__ == "kernels":
    # Imported as top-level `kernels`: only a checkout's root on sys.path does that (`python -m pytest`,
    # or Ray workers, which get the driver's working directory). The name belongs to Hugging Face's
    # `kernels`, which transformers>=5.25 requires and imports at start-up; hand the name to it.
    from ._shadowed_name import hand_over_to_installed

    hand_over_to_installed(__file__)
else:
    from .cross_attention import query_cross_attention, query_cross_attention_reference
    from .dispatch import KernelUnavailableError, kernel_mode, triton_available, use_triton
    from .maxsim import maxsim, maxsim_reference, maxsim_topk, maxsim_topk_reference
    from .pair_bias import PairBiasWeights, gaussian_pair_bias, gaussian_pair_bias_reference
    from .projection import project_normalize, project_normalize_reference

__all__ = [
    "KernelUnavailableError",
    "PairBiasWeights",
    "gaussian_pair_bias",
    "gaussian_pair_bias_reference",
    "kernel_mode",
    "maxsim",
    "maxsim_reference",
    "maxsim_topk",
    "maxsim_topk_reference",
    "project_normalize",
    "project_normalize_reference",
    "query_cross_attention",
    "query_cross_attention_reference",
    "triton_available",
    "use_triton",
]
