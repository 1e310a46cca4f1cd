"""llmsys.moe - micro-step MoE load balancing for RL post-training (ForeMoE). Protocol to be written."""

__all__: list[str] = []
