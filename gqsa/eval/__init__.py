"""Evaluation: perplexity on a token stream and local multiple-choice (zero-shot) accuracy."""

from gqsa.eval.perplexity import perplexity
from gqsa.eval.zeroshot import evaluate_mc, load_mc_tasks, loglikelihood, loglikelihoods

__all__ = ["evaluate_mc", "load_mc_tasks", "loglikelihood", "loglikelihoods", "perplexity"]
