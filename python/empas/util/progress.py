"""The one progress bar: ``tqdm.auto`` when tqdm is installed and progress is on,
a silent stand-in with the same methods otherwise (never an ImportError)."""

from __future__ import annotations

from typing import Any

__all__ = ["progress_bar"]


class _Silent:
    """What a bar offers, doing nothing: update, set_postfix(_str), close."""

    def __init__(self, total: int = 0, initial: int = 0):
        self.total = total
        self.n = initial

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(
    total: int, desc: str, unit: str, *, enabled: bool = True, initial: int = 0, leave: bool = True
):
    """A tqdm bar over ``total`` steps, or a silent one (``enabled=False`` or no tqdm)."""
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave)
    return _Silent(total, initial)
