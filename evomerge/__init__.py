"""evomerge: evolve model-merge recipes with CMA-ES (Akiba et al., 2024)."""

__version__ = "0.1.0"
