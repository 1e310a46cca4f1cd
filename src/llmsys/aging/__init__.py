"""llmsys.aging - software-aging campaigns for LLM serving. Protocol to be written."""

__all__: list[str] = []
