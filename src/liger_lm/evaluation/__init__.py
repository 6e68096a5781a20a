"""Step 3 of the pipeline: how much quality survived.

Read in this order:
- `sources`: the texts to measure (the packaged passage, a local file, `hf:<dataset>[:<config>]:<split>[:<column>]`);
- `scoring`: log-likelihoods exactly as lm-eval 0.4.13's HFLM defines them, and zero-shot multiple choice;
- `perplexity`: `perplexity`, sliding windows or the held-out layout with its standard error and positions;
- `suite`: the task suite of `liger_lm.data.tasks`, task specs, recovery (converted/base), `liger eval`;
- `report`: results as tables (terminal and Markdown) and the recovery chart.
"""

from ..errors import EvaluationError
from .perplexity import HELD_OUT_WINDOWS, PerplexityResult, long_context_ratio, perplexity, perplexity_ratio
from .report import plot_recovery, recovery_table_markdown, render_report
from .scoring import (
    accuracy_standard_error,
    encode_request,
    loglikelihood_tokens,
    loglikelihoods,
    score_multiple_choice,
)
from .sources import read_source_text, sample_text
from .suite import RECOVERY_METRIC, evaluate_named_models, evaluate_suite, parse_task_spec, recovery

__all__ = [
    "EvaluationError",
    "HELD_OUT_WINDOWS",
    "PerplexityResult",
    "RECOVERY_METRIC",
    "accuracy_standard_error",
    "encode_request",
    "evaluate_named_models",
    "evaluate_suite",
    "loglikelihood_tokens",
    "loglikelihoods",
    "long_context_ratio",
    "parse_task_spec",
    "perplexity",
    "perplexity_ratio",
    "plot_recovery",
    "read_source_text",
    "recovery",
    "recovery_table_markdown",
    "render_report",
    "sample_text",
    "score_multiple_choice",
]
