from typing import Any

_resource_tracker: Any
