"""llmsys: three LLM-systems papers as software.

- :mod:`llmsys.tiermem` - tiered memory expansion for inference (ITME): prefix KV blocks over
  DRAM, CXL, SSD and a shared Redis store, with foresight prefetch.
- :mod:`llmsys.moe` - micro-step MoE load balancing for RL post-training (ForeMoE).
- :mod:`llmsys.aging` - software-aging campaigns for LLM serving and the statistics that
  judge them.
- :mod:`llmsys.core` - what two or more systems share: errors, the bundled model, results.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
