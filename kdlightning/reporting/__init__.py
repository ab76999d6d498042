"""Pure summaries of study results: accuracy gains per method and scenario with their uncertainty, and guidance.

Nothing here trains or imports Lightning: a study's ``results.csv`` rows go in, numbers and Markdown
come out, so ``summary.md`` and the guidance page can always be recomputed from ``results.csv``. Every
statistic is :mod:`kdlightning.stats`'s. :mod:`kdlightning.reporting.rows` defines the rows and computes the
gains' statistics; :mod:`kdlightning.reporting.render` writes them as Markdown tables and plots;
:mod:`kdlightning.reporting.tuned` sets the tuned runs against the untuned methods, and
:mod:`kdlightning.reporting.teachers` studies beside teachers of different strength.
"""

from kdlightning.reporting.render import (
    Recommendation,
    plot_gains,
    recommendations,
    render_guidance,
    render_guidance_page,
    render_guidance_text,
    render_summary,
)
from kdlightning.reporting.rows import (
    VALIDATIONS,
    ResultRow,
    TunedImprovement,
    add_gains,
    error_line,
    hyperparameters_of,
    is_failed,
    paired_gains,
    read_csv,
    slug,
    summarize,
    tuned_improvement,
    tuned_validation,
    write_csv,
)

__all__ = [
    "VALIDATIONS",
    "Recommendation",
    "ResultRow",
    "TunedImprovement",
    "add_gains",
    "error_line",
    "hyperparameters_of",
    "is_failed",
    "paired_gains",
    "plot_gains",
    "read_csv",
    "recommendations",
    "render_guidance",
    "render_guidance_page",
    "render_guidance_text",
    "render_summary",
    "slug",
    "summarize",
    "tuned_improvement",
    "tuned_validation",
    "write_csv",
]
