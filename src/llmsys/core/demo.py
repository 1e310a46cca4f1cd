"""Demo of the shared core: the bundled real model answers a question, greedy."""

from __future__ import annotations

import time
from pathlib import Path

from llmsys.core.model import chat_prompt_ids, greedy_generate, load_bundled_model


def run_demo(out_dir: Path) -> list[str]:
    """Load the bundled model and answer one question; return summary lines."""
    started = time.perf_counter()
    bundled = load_bundled_model()
    load_s = time.perf_counter() - started
    question = "What is the capital of France?"
    prompt = chat_prompt_ids(bundled, question)
    started = time.perf_counter()
    answer_ids = greedy_generate(bundled, prompt, max_new_tokens=20)
    gen_s = time.perf_counter() - started
    answer = bundled.tokenizer.decode(answer_ids, skip_special_tokens=True).strip()
    (out_dir / "answer.txt").write_text(f"Q: {question}\nA: {answer}\n")
    return [
        f"model {bundled.gguf_path.name} loaded in {load_s:.1f} s "
        f"({bundled.kv_bytes_per_token} bytes of KV per token in {bundled.dtype})",
        f"Q: {question}",
        f"A: {answer}  ({len(answer_ids)} tokens in {gen_s:.2f} s)",
    ]
