"""llmsys.tiermem - tiered memory expansion for inference (ITME). Protocol to be written."""

__all__: list[str] = []
