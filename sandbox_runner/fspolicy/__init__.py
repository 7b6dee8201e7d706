"""Filesystem policy for the work root: disk admission with reservations, the scrub ladder, periodic scrubbing.

``policy``      the policy file (``policies/filesystem.toml``), loaded and checked
``jobdirs``     walking ``<root>/jobs`` oldest first; running / crashed / succeeded / failed, by lock not by marker
``quarantine``  ``<root>/quarantine``: atomic moves in, oldest-first purges
``cache``       the localize cache as the scrubber needs it (LRU eviction protocol)
``ladder``      the scrub ladder (and housekeeping), streaming, with one event per action
``admission``   check-and-reserve under the root lock; refusal with what was needed and what is free
``periodic``    the scrubber a long-running worker calls between jobs, and the body of ``sandbox-runner scrub``
"""

from sandbox_runner.fspolicy.admission import Reservation, admit
from sandbox_runner.fspolicy.ladder import Scrubber
from sandbox_runner.fspolicy.periodic import PeriodicScrubber, scrub_once
from sandbox_runner.fspolicy.policy import FsPolicy, load_fs_policy
from sandbox_runner.fspolicy.report import Action, Report

__all__ = ["Action", "FsPolicy", "PeriodicScrubber", "Report", "Reservation", "Scrubber", "admit",
           "load_fs_policy", "scrub_once"]
