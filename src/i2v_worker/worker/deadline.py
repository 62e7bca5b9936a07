"""A job's effective deadline: the worker's own limit, never beyond the platform's execution limit.

RunPod stops a job that runs past the endpoint's execution timeout (600 s unless raised) with
`TIMED_OUT` and no output: the client never learns why. The worker's deadline must end first, with
time left to return its readable `timeout` error. The platform's limit is taken from where it is
stated, in this order:
1. the job itself: `job["policy"]["executionTimeout"]` (milliseconds), the request policy a client
   may send (`i2v-worker submit --execution-timeout`). runpod 1.12 hands the job dict to the
   handler as the job-take API returned it (`rp_job.get_job`); its own code reads only `id` and
   `input`, so this field is honoured when present and never required.
2. the environment: I2V_EXECUTION_TIMEOUT_S, the endpoint's execution timeout as its operator set it
   (RunPod does not tell a worker its endpoint's timeout).
The effective deadline is min(I2V_JOB_DEADLINE_S, limit - margin), the margin being what is kept
for stopping the engine and posting the error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from i2v_worker.config import Settings

MARGIN_S = 15.0  # stop the engine, answer, post the result
MIN_MARGIN_FRACTION = 0.1  # for very short limits: keep a tenth instead


@dataclass(frozen=True)
class Deadline:
    seconds: float
    source: str  # what set it, for the error message ("I2V_JOB_DEADLINE_S", ...)
    platform_limit_s: float | None = None


def job_execution_timeout_s(job: Any) -> float | None:
    """`policy.executionTimeout` of the job in seconds, when it is a positive number."""
    policy = job.get("policy") if isinstance(job, dict) else None
    value = policy.get("executionTimeout") if isinstance(policy, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return float(value) / 1000.0


def platform_margin_s(limit_s: float) -> float:
    return min(MARGIN_S, limit_s * MIN_MARGIN_FRACTION)


def effective_deadline(settings: Settings, job: Any) -> Deadline:
    own = Deadline(float(settings.job_deadline_s), "I2V_JOB_DEADLINE_S")
    from_job = job_execution_timeout_s(job)
    if from_job is not None:
        limit, where = from_job, "the request's policy.executionTimeout"
    elif settings.execution_timeout_s is not None:
        limit, where = float(settings.execution_timeout_s), "I2V_EXECUTION_TIMEOUT_S"
    else:
        return own
    capped = limit - platform_margin_s(limit)
    if capped < own.seconds:
        return Deadline(round(capped, 3), f"{where} ({limit:g} s) minus {platform_margin_s(limit):g} s", limit)
    return Deadline(own.seconds, own.source, limit)
