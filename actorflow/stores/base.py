"""What the stores share beyond the Store Protocol: ``async with store:`` closes it."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import trio


class ClosingStore:
    """``async with store:`` returns the store and closes it (``aclose``) on the way out."""

    async def __aenter__(self) -> Self:
        await trio.lowlevel.checkpoint()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        raise NotImplementedError
