"""The study pipeline behind ``kdl study``: every method, every scenario, every seed, from the same start.

- :mod:`kdlightning.study.runner`: the :class:`Study`, its runs and their rows;
- ``kdlightning.study.parallel``: a study's cells (scenario × seed) in parallel on Ray (``Study(ray=...)``);
- :mod:`kdlightning.study.record`: ``study.json``, which keeps a resume from mixing configurations;
- :mod:`kdlightning.study.report`: the tuning heatmaps (the tables are :mod:`kdlightning.reporting`'s).
"""

from kdlightning.pipeline import NetworkFactory
from kdlightning.study.runner import TUNED_KD, MethodFactory, Study, continue_alone, default_scenarios

__all__ = ["TUNED_KD", "MethodFactory", "NetworkFactory", "Study", "continue_alone", "default_scenarios"]
