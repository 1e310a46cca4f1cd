"""Imported by the test fork server: loads the planner's compiled packing loop once, so the
ranks forked from it do not each spend seconds loading it."""

import numpy as np

import llmsys.moe.ep.executor
import llmsys.moe.ep.transfer  # noqa: F401
from llmsys.moe.planner import plan_foremoe
from llmsys.moe.topology import Topology

plan_foremoe(np.array([[9, 1, 1, 1]]), Topology(1, 2, 3))
