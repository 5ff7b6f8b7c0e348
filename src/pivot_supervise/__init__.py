"""pivot-supervise: a watch-mode supervisor for Python data pipelines.

Declare stages in your pipeline file::

    from pivot_supervise import stage

    @stage(deps=["data/raw.csv"], outs=["data/clean.csv"])
    def clean() -> None:
        ...

then run ``pivot-supervise watch`` in the project.  This module is imported by user
pipelines inside every worker, so it exports only what a pipeline needs and imports
nothing heavy (no trio, no loky).
"""

from .pipeline._errors import PipelineError
from .pipeline._stage import stage

__version__ = "0.1.0"

__all__ = ["PipelineError", "__version__", "stage"]
