"""The study pipeline behind ``kdl study``: every method, every scenario, every seed, from the same start.

- :mod:`kdlightning.study.runner`: the :class:`Study`, which checks its arguments and runs every missing run;
- :mod:`kdlightning.study.config`: its settings, frozen (:class:`StudyConfig`), and the names of its runs;
- :mod:`kdlightning.study.pretraining`: the parties' pre-trained networks (:class:`Pretraining`);
- :mod:`kdlightning.study.cells`: a cell's runs from its start (:class:`CellRunner`), tuned KD's searches among them
  (:mod:`kdlightning.study.tuned`);
- ``kdlightning.study.parallel``: a study's cells (scenario × seed) in parallel on Ray (``Study(ray=...)``);
- :mod:`kdlightning.study.record`: ``study.json``, which keeps a resume from mixing configurations;
- :mod:`kdlightning.study.report`: what the study writes from its rows (:class:`StudyReport`; the tables are
  :mod:`kdlightning.reporting`'s).
"""

from kdlightning.pipeline import NetworkFactory
from kdlightning.study.cells import CellRunner
from kdlightning.study.config import TUNED_KD, MethodFactory, StudyConfig, default_scenarios
from kdlightning.study.pretraining import Pretraining
from kdlightning.study.report import StudyReport
from kdlightning.study.runner import Study, continue_alone

__all__ = [
    "TUNED_KD",
    "CellRunner",
    "MethodFactory",
    "NetworkFactory",
    "Pretraining",
    "Study",
    "StudyConfig",
    "StudyReport",
    "continue_alone",
    "default_scenarios",
]
