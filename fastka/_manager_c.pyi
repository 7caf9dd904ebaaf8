from typing import Dict

from ._manager_py import KeepaliveManager as KeepaliveManager  # the same interface, one declaration

__all__ = ["KeepaliveManager"]

EVENT_CODES: Dict[str, int]
MAX_REQUESTS_C: int
