"""tide-megatron: TIDE cross-architecture distillation of diffusion LLMs on megatron-core."""

__version__ = "0.1.0"
