"""The evaluator writes its own summaries: batched, resumable generation and output cleaning."""

from selfrec_ft.generation.clean import clean_summary
from selfrec_ft.generation.generate import GenerationResult, candidate_seed, generate_summaries

__all__ = ["GenerationResult", "candidate_seed", "clean_summary", "generate_summaries"]
