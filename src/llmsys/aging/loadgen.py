"""Soak load generator for OpenAI-compatible servers, with bounded client memory.

Protocol: :func:`run_load` drives one server with a :class:`LoadConfig` and returns a
:class:`LoadSummary`. Arrivals are open-loop (``poisson``: exponential gaps at
``rate_rps``; ``gamma``: gamma gaps with the same mean and shape ``gamma_shape``, CV =
1/sqrt(shape)) or closed-loop (``closed``: ``concurrency`` workers, each sending its next
request when the previous one ends). The i-th request's arrival gap, prompt length and
output length come from one ``random.Random(seed)`` stream, so a run is replayable; lengths
are log-normal (heavy-tailed) around the medians, clipped to the maxima (sigma 0: fixed).
Open loop never queues in the client: an arrival that finds ``max_in_flight`` requests
running is recorded as ``dropped``.

Each request is timed on the monotonic clock: TTFT is send -> first SSE chunk with content,
ITL the gaps between content chunks (one chunk per token on llmsys, llama.cpp and vLLM).
Every request becomes one JSON line in ``OUT/requests.jsonl`` (written and flushed as it
ends); in memory only fixed-size log-bucket histograms and counters are kept, and the
client's own RSS and CPU go to ``OUT/client.csv`` once a second - so a multi-day soak needs
constant client memory, and that claim is measured rather than assumed.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import IO, Any

import psutil

from llmsys.aging.openai_client import post_completion
from llmsys.aging.probe_errors import ProbeConfigError

__all__ = [
    "ArrivalProcess",
    "Endpoint",
    "LatencyHistogram",
    "LoadConfig",
    "LoadProgress",
    "LoadSummary",
    "run_load",
]

_WORDS = (
    "the of and to in is was for on are with as by at from this that have not but memory "
    "server cache model token request time system page process leak stream load test value "
    "small large first last long short fast slow data block"
)
_VOCAB = tuple(_WORDS.split())


class ArrivalProcess(Enum):
    """How request arrivals are generated."""

    POISSON = "poisson"
    GAMMA = "gamma"
    CLOSED = "closed"


class Endpoint(Enum):
    """Which OpenAI route to call."""

    COMPLETIONS = "completions"
    CHAT = "chat"


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """A load run. Raises :class:`ProbeConfigError` when out of range."""

    url: str
    """Server base URL, e.g. ``http://127.0.0.1:8000``."""
    arrival: ArrivalProcess = ArrivalProcess.POISSON
    """Open-loop ``poisson``/``gamma`` or closed-loop ``closed``."""
    rate_rps: float = 1.0
    """Mean open-loop arrival rate, requests per second (> 0)."""
    gamma_shape: float = 1.0
    """Shape of gamma gaps (> 0; 1 is Poisson, < 1 burstier)."""
    concurrency: int = 1
    """Closed-loop workers (>= 1)."""
    max_in_flight: int = 64
    """Open-loop bound on running requests (>= 1); more arrivals are dropped."""
    duration_s: float = 60.0
    """Seconds during which requests are started (> 0)."""
    max_requests: int | None = None
    """Stop after this many requests (None: no limit)."""
    seed: int = 0
    """Seed of gaps and lengths."""
    endpoint: Endpoint = Endpoint.COMPLETIONS
    """``/v1/completions`` or ``/v1/chat/completions``."""
    stream: bool = True
    """Ask for SSE streaming (needed for TTFT and ITL)."""
    model: str | None = None
    """``model`` field to send (None: omitted)."""
    prompt_words_median: float = 32.0
    """Median prompt length, words (>= 1)."""
    prompt_words_sigma: float = 1.0
    """Log-normal sigma of prompt length (>= 0)."""
    prompt_words_max: int = 1024
    """Clip of prompt length, words."""
    output_tokens_median: float = 16.0
    """Median ``max_tokens`` (>= 1)."""
    output_tokens_sigma: float = 0.8
    """Log-normal sigma of ``max_tokens`` (>= 0)."""
    output_tokens_max: int = 256
    """Clip of ``max_tokens``."""
    timeout_s: float = 120.0
    """Socket timeout of one request, seconds."""

    def __post_init__(self) -> None:
        parsed = urllib.parse.urlsplit(self.url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ProbeConfigError(f"url must be http://HOST[:PORT], not {self.url!r}")
        if self.rate_rps <= 0 or self.gamma_shape <= 0 or self.duration_s <= 0:
            raise ProbeConfigError("rate_rps, gamma_shape and duration_s must be > 0")
        if self.concurrency < 1 or self.max_in_flight < 1:
            raise ProbeConfigError("concurrency and max_in_flight must be >= 1")
        if self.max_requests is not None and self.max_requests < 1:
            raise ProbeConfigError("max_requests must be >= 1 or None")
        if self.prompt_words_median < 1 or self.output_tokens_median < 1:
            raise ProbeConfigError("length medians must be >= 1")
        if self.prompt_words_sigma < 0 or self.output_tokens_sigma < 0:
            raise ProbeConfigError("length sigmas must be >= 0")
        if self.prompt_words_max < 1 or self.output_tokens_max < 1 or self.timeout_s <= 0:
            raise ProbeConfigError("length maxima must be >= 1 and timeout_s > 0")


class LatencyHistogram:
    """Fixed log-spaced buckets from 10 us to 10,000 s (20 per decade): constant memory.

    Quantiles are bucket upper edges, so they over-estimate by at most 12.2 % (10**(1/20)).
    """

    _LO, _PER_DECADE, _DECADES = 1e-5, 20, 9

    def __init__(self) -> None:
        self.counts = [0] * (self._PER_DECADE * self._DECADES + 2)
        self.n = 0

    def add(self, value_s: float) -> None:
        """Count one latency in seconds."""
        ratio = value_s / self._LO
        i = 0 if ratio <= 1.0 else 1 + int(math.log10(ratio) * self._PER_DECADE)
        self.counts[min(i, len(self.counts) - 1)] += 1
        self.n += 1

    def quantile(self, q: float) -> float | None:
        """Upper edge of the bucket holding quantile ``q`` in [0, 1]; None if empty."""
        if self.n == 0:
            return None
        rank, seen = q * self.n, 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank and c:
                return float(self._LO * 10 ** (i / self._PER_DECADE))
        return float(self._LO * 10 ** ((len(self.counts) - 1) / self._PER_DECADE))


class LoadProgress:
    """Live cumulative counts of a run, readable from another thread (e.g. a monitor).

    For servers without a Prometheus endpoint (llama-cpp-python), these client-side counts
    give the monitor its ``requests`` and ``tokens`` columns
    (:attr:`~llmsys.aging.monitor.MonitorTarget.counters`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests = 0
        self._tokens = 0

    def add(self, requests: int, tokens: int) -> None:
        """Count finished requests and the tokens they received."""
        with self._lock:
            self._requests += requests
            self._tokens += tokens

    def counts(self) -> tuple[float, float]:
        """(requests answered OK, tokens received) so far."""
        with self._lock:
            return float(self._requests), float(self._tokens)


@dataclass(frozen=True, slots=True)
class LoadSummary:
    """Aggregates of a run (the per-request truth is ``requests.jsonl``)."""

    requests_ok: int
    """Requests answered with HTTP 200 and a complete body."""
    requests_error: int
    """Requests that failed (status, socket or protocol error)."""
    requests_dropped: int
    """Open-loop arrivals not sent because ``max_in_flight`` were running."""
    tokens: int
    """Content chunks (streaming) or completion tokens (non-streaming) received."""
    duration_s: float
    """Wall time from the first arrival to the last response, seconds."""
    ttft_p50_s: float | None
    """Median time to first token, seconds."""
    ttft_p99_s: float | None
    """99th percentile time to first token, seconds."""
    itl_p50_s: float | None
    """Median inter-token latency, seconds."""
    itl_p99_s: float | None
    """99th percentile inter-token latency, seconds."""
    e2e_p50_s: float | None
    """Median request latency, seconds."""
    client_rss_start_bytes: int
    """Client RSS when the run began."""
    client_rss_max_bytes: int
    """Largest client RSS seen in the 1 Hz samples."""
    client_cpu_s: float
    """Client CPU time used by the run, seconds."""
    out_dir: Path
    """Where ``requests.jsonl`` and ``client.csv`` are."""
    config: dict[str, Any] = field(default_factory=dict)
    """The :class:`LoadConfig` as plain values."""


class _Run:
    def __init__(self, cfg: LoadConfig, out_dir: Path, progress: LoadProgress | None) -> None:
        self.cfg = cfg
        self.progress = progress
        parsed = urllib.parse.urlsplit(cfg.url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        chat = cfg.endpoint is Endpoint.CHAT
        self.path = "/v1/chat/completions" if chat else "/v1/completions"
        self.rng = random.Random(cfg.seed)
        self.rng_lock = threading.Lock()
        self.lock = threading.Lock()
        self.index = 0
        self.in_flight = 0
        self.ok = self.errors = self.dropped = self.tokens = 0
        self.ttft, self.itl, self.e2e = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
        out_dir.mkdir(parents=True, exist_ok=True)
        self.records: IO[str] = open(out_dir / "requests.jsonl", "w")  # noqa: SIM115
        self.t0 = time.monotonic()
        self.wall0 = time.time()

    def _length(self, median: float, sigma: float, cap: int) -> int:
        value = median if sigma == 0 else self.rng.lognormvariate(math.log(median), sigma)
        return max(1, min(cap, round(value)))

    def next_request(self) -> tuple[int, float, int, int, int] | None:
        """(index, gap_s, prompt_words, max_tokens, prompt_seed) of the next request, or None."""
        cfg = self.cfg
        with self.rng_lock:
            if cfg.max_requests is not None and self.index >= cfg.max_requests:
                return None
            i = self.index
            self.index += 1
            if cfg.arrival is ArrivalProcess.GAMMA:
                gap = self.rng.gammavariate(cfg.gamma_shape, 1.0 / (cfg.gamma_shape * cfg.rate_rps))
            else:
                gap = self.rng.expovariate(cfg.rate_rps)
            words = self._length(
                cfg.prompt_words_median, cfg.prompt_words_sigma, cfg.prompt_words_max
            )
            tokens = self._length(
                cfg.output_tokens_median, cfg.output_tokens_sigma, cfg.output_tokens_max
            )
            prompt_seed = self.rng.getrandbits(32)
        return i, gap, words, tokens, prompt_seed

    def body(self, words: int, max_tokens: int, prompt_seed: int) -> bytes:
        rng = random.Random(prompt_seed)
        text = " ".join(rng.choice(_VOCAB) for _ in range(words))
        obj: dict[str, Any] = {"max_tokens": max_tokens, "stream": self.cfg.stream}
        if self.cfg.endpoint is Endpoint.CHAT:
            obj["messages"] = [{"role": "user", "content": text}]
        else:
            obj["prompt"] = text
        if self.cfg.model is not None:
            obj["model"] = self.cfg.model
        return json.dumps(obj).encode()

    def send(self, i: int, scheduled_s: float, words: int, max_tokens: int, seed: int) -> None:
        """Send one request, time it, and record it."""
        rec: dict[str, Any] = {
            "i": i,
            "scheduled_s": round(scheduled_s, 6),
            "prompt_words": words,
            "max_tokens": max_tokens,
            "start_s": round(time.monotonic() - self.t0, 6),
        }
        gaps = post_completion(
            self.host,
            self.port,
            self.path,
            self.body(words, max_tokens, seed),
            self.cfg.stream,
            self.cfg.timeout_s,
            rec,
        )
        self.finish(rec, gaps)

    def finish(self, rec: dict[str, Any], gaps: list[float]) -> None:
        line = json.dumps(rec) + "\n"
        with self.lock:
            if rec["status"] == "ok":
                self.ok += 1
                self.e2e.add(rec["e2e_s"])
                if rec["ttft_s"] is not None:
                    self.ttft.add(rec["ttft_s"])
                for g in gaps:
                    self.itl.add(g)
            elif rec["status"] == "dropped":
                self.dropped += 1
            else:
                self.errors += 1
            self.tokens += rec["tokens"]
            self.records.write(line)
            self.records.flush()
        if self.progress is not None and rec["status"] == "ok":
            self.progress.add(1, rec["tokens"])

    # ----------------------------------------------------------------- drivers
    def run_open(self, stop: threading.Event) -> None:
        cfg = self.cfg
        deadline = self.t0 + cfg.duration_s
        scheduled = 0.0
        with ThreadPoolExecutor(cfg.max_in_flight, thread_name_prefix="load") as pool:
            while (nxt := self.next_request()) is not None:
                i, gap, words, tokens, seed = nxt
                scheduled += gap
                if self.t0 + scheduled >= deadline:
                    break
                delay = self.t0 + scheduled - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    break
                with self.lock:
                    full = self.in_flight >= cfg.max_in_flight
                    if not full:
                        self.in_flight += 1
                if full:
                    self.finish(
                        {
                            "i": i,
                            "scheduled_s": round(scheduled, 6),
                            "status": "dropped",
                            "tokens": 0,
                            "ttft_s": None,
                        },
                        [],
                    )
                    continue
                pool.submit(self._guarded, i, scheduled, words, tokens, seed)

    def _guarded(self, i: int, scheduled: float, words: int, tokens: int, seed: int) -> None:
        try:
            self.send(i, scheduled, words, tokens, seed)
        finally:
            with self.lock:
                self.in_flight -= 1

    def run_closed(self, stop: threading.Event) -> None:
        deadline = self.t0 + self.cfg.duration_s

        def worker() -> None:
            while not stop.is_set() and time.monotonic() < deadline:
                nxt = self.next_request()
                if nxt is None:
                    return
                i, _gap, words, tokens, seed = nxt
                self.send(i, time.monotonic() - self.t0, words, tokens, seed)

        threads = [
            threading.Thread(target=worker, name=f"load-{w}", daemon=True)
            for w in range(self.cfg.concurrency)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def _sample_client(out_dir: Path, stop: threading.Event, run: _Run, peak: list[int]) -> None:
    me = psutil.Process()
    with open(out_dir / "client.csv", "w") as fh:
        fh.write("t,rss_bytes,cpu_s,in_flight,requests\n")
        while True:
            with me.oneshot():
                rss = me.memory_info().rss
                cpu = sum(me.cpu_times()[:2])
            peak[0] = max(peak[0], rss)
            done = run.ok + run.errors + run.dropped
            t = time.monotonic() - run.t0
            fh.write(f"{t:.3f},{rss},{cpu:.3f},{run.in_flight},{done}\n")
            fh.flush()
            if stop.wait(1.0):
                return


def run_load(
    config: LoadConfig,
    out_dir: Path,
    stop: threading.Event | None = None,
    progress: LoadProgress | None = None,
) -> LoadSummary:
    """Run the load of ``config`` against its server; block until every request has ended.

    ``stop`` (set from another thread) ends the run early. Failed requests are recorded,
    never raised.

    Raises:
        OSError: ``out_dir`` cannot be written.
    """
    stop = stop or threading.Event()
    me = psutil.Process()
    cpu0 = sum(me.cpu_times()[:2])
    rss0 = me.memory_info().rss
    run = _Run(config, out_dir, progress)
    peak = [rss0]
    sampler_stop = threading.Event()
    sampler = threading.Thread(
        target=_sample_client,
        args=(out_dir, sampler_stop, run, peak),
        name="load-client-sampler",
        daemon=True,
    )
    sampler.start()
    try:
        if config.arrival is ArrivalProcess.CLOSED:
            run.run_closed(stop)
        else:
            run.run_open(stop)
    finally:
        sampler_stop.set()
        sampler.join()
        run.records.close()
    cfg_dict = asdict(config)
    cfg_dict["arrival"], cfg_dict["endpoint"] = config.arrival.value, config.endpoint.value
    return LoadSummary(
        requests_ok=run.ok,
        requests_error=run.errors,
        requests_dropped=run.dropped,
        tokens=run.tokens,
        duration_s=time.monotonic() - run.t0,
        ttft_p50_s=run.ttft.quantile(0.5),
        ttft_p99_s=run.ttft.quantile(0.99),
        itl_p50_s=run.itl.quantile(0.5),
        itl_p99_s=run.itl.quantile(0.99),
        e2e_p50_s=run.e2e.quantile(0.5),
        client_rss_start_bytes=rss0,
        client_rss_max_bytes=peak[0],
        client_cpu_s=sum(me.cpu_times()[:2]) - cpu0,
        out_dir=out_dir,
        config=cfg_dict,
    )
