from typing import Any

_resource_tracker: Any

def ensure_running() -> None: ...
