"""Evaluation: lm-eval over a live model whose weights are replaced per candidate."""

from evomerge.evaluate.backends import Backend, HFBackend, VLLMBackend, make_backend
from evomerge.evaluate.fitness import Objective, Results, Term, fitness
from evomerge.evaluate.guard import CandidateFailed
from evomerge.evaluate.runner import Evaluation, evaluate
from evomerge.evaluate.settings import EvalSettings
from evomerge.evaluate.tasks import TASKS_DIR, TaskSet, load_tasks

__all__ = [
    "TASKS_DIR",
    "Backend",
    "CandidateFailed",
    "EvalSettings",
    "Evaluation",
    "HFBackend",
    "Objective",
    "Results",
    "TaskSet",
    "Term",
    "VLLMBackend",
    "evaluate",
    "fitness",
    "load_tasks",
    "make_backend",
]
