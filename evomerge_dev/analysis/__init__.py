"""Analysis used by scripts/ only: optimizer comparisons, search overhead, mixed-genome CMA-ES,
data-flow path plots."""
