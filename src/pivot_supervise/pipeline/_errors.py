"""The one error a broken pipeline definition raises.

Loading a pipeline runs inside a worker of a new generation; whatever goes wrong there
travels back to the supervisor as a message and is shown to a user who is in the middle
of editing.  So a :class:`PipelineError` is always written for that reader: it names the
offender (a stage, a path, a module) and says what to change.  The supervisor keeps the
last good pipeline running and simply shows the message.
"""

from __future__ import annotations


class PipelineError(Exception):
    """The pipeline cannot be loaded or is invalid.

    The message is the whole user-facing story, e.g.::

        stage 'clean': dep '/data/raw.csv' is absolute; declare it relative to the
        project root, e.g. 'data/raw.csv'
    """
