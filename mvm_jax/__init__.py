"""mvm_jax: masked video modeling (MAE-ST, VIMPAC, HPM, ViC-MAE) in JAX/Flax."""

__version__ = '0.1.0'
