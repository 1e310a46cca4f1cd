"""llmsys.tiermem.sim - the ITME serving comparison, simulated on the real store code.

Objects
=======
- :class:`HardwareProfile` (:func:`load_profile`, :func:`profile_names`): compute time
  (prefill as a function of new tokens and context, decode), KV bytes per token, block
  geometry, and one :class:`~llmsys.tiermem.TransferModel` per tier link. Shipped:
  ``h100-cmm`` (public figures, each with its source) and ``this-machine`` (calibrated by
  :func:`calibrate_profile` from microbenchmarks and serving runs at ratios 1 and 2).
- :class:`SimRequest` (:func:`requests_from_trace`, :func:`requests_from_serving`): a
  request reduced to its block keys and lengths.
- :func:`replay` -> :class:`SimRun`: one configuration at one ratio; :func:`simulate` ->
  :class:`SimComparison`: the five configurations of the serving comparison.

Protocol
========
A replay builds a real :class:`~llmsys.tiermem.TieredStore` with
``StoreConfig(metadata_only=True)`` on a :class:`LaneClock` (one
:class:`~llmsys.tiermem.ManualClock` per lane: engine, foresight stages, saves) with an
:class:`~llmsys.tiermem.InlineExecutor`, and drives it with the engine's calls::

    jobs = planner.plan(next_requests)            # the real ForesightPlanner: pins, chunks
    store.lookup / prepare_load / planner.take / read      # tiers wait their link cost
    clock.sleep(profile.prefill_s(...) + profile.decode_s(...))
    store.prepare_store / write / complete_store / complete_load

Foresight chunk jobs (``store.prefetch`` via ``ForesightPlanner.run``) run on their stage
lanes when the engine's time reaches their start; so eviction, demotion, promotion, pinning
and prefetch are the store's own, and only time is simulated. Every figure a simulation
reports is labelled ``simulated``.

Errors
======
::

    TierConfigError (ConfigError)
    └── ProfileError        bad/unknown profile, missing tier link, bad replay option
    InputError               unreadable or malformed trace
"""

from typing import TYPE_CHECKING

from llmsys.core.lazy import lazy_exports

if TYPE_CHECKING:
    from llmsys.tiermem.sim.calibrate import MachineMeasurements, calibrate_profile, measure_machine
    from llmsys.tiermem.sim.profile import (
        Calibration,
        HardwareProfile,
        ProfileError,
        load_profile,
        profile_names,
        profile_to_toml,
    )
    from llmsys.tiermem.sim.replay import LaneClock, ReplayOptions, SimRequestResult, SimRun, replay
    from llmsys.tiermem.sim.simulate import PAPER_SPEEDUP, SimComparison, simulate
    from llmsys.tiermem.sim.workload import (
        SimRequest,
        footprint_bytes,
        requests_from_serving,
        requests_from_trace,
        sim_namespace,
    )

__all__ = [
    "PAPER_SPEEDUP",
    "Calibration",
    "HardwareProfile",
    "LaneClock",
    "MachineMeasurements",
    "ProfileError",
    "ReplayOptions",
    "SimComparison",
    "SimRequest",
    "SimRequestResult",
    "SimRun",
    "calibrate_profile",
    "footprint_bytes",
    "load_profile",
    "measure_machine",
    "profile_names",
    "profile_to_toml",
    "replay",
    "requests_from_serving",
    "requests_from_trace",
    "sim_namespace",
    "simulate",
]

__getattr__, __dir__ = lazy_exports(__name__, __file__)
