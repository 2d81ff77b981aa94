"""Placeholder."""


def write() -> None:
    pass
