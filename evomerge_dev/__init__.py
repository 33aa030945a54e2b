"""Development-only code, not shipped: test fixtures (tiny checkpoints, a throwaway PostgreSQL,
recipe fuzzing), the SIGKILL reliability harness, peer benchmarks and the analysis behind
scripts/. Importable from a checkout (pytest and scripts/ put the repository root on the path);
`pip install .` installs `evomerge` only."""
