"""Everything that runs inside a worker process.

A worker imports this package before it imports any user code, so it stays light on
purpose: no trio, no structlog, nothing that the supervisor needs and a worker does not.
The modules, one concept each:

- ``_imports``: project code is always compiled from source, never from a stale ``.pyc``.
- ``_loader``: import the user's pipeline and turn it into a plain-data snapshot.
- ``_runner``: run one stage, capture its output, stat its outputs.
- ``_watchdog``: exit when the supervisor is gone.
- ``_messages``: the plain-data requests and replies that cross the process boundary.
- ``_tasks``: the functions the supervisor submits to a loky executor.
"""
