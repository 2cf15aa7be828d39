"""What every layer shares: ``async with layer:`` closes it with ``aclose()``."""

from __future__ import annotations

from typing import Self

__all__ = ["Layer"]


class Layer:
    """Base of the layers' public classes: an async context manager over ``aclose()``."""

    async def aclose(self) -> None:
        """Release what the layer holds (connections, workers, queued items)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
