from ._manager_py import KeepaliveManager as KeepaliveManager  # the same interface, one declaration

__all__ = ["KeepaliveManager"]

MAX_REQUESTS_C: int
