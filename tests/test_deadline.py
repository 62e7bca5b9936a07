"""The effective job deadline (worker/deadline.py): never beyond the platform's execution limit
where the job (policy.executionTimeout, ms) or the environment (I2V_EXECUTION_TIMEOUT_S) states it."""

from __future__ import annotations

from pathlib import Path

import pytest

from i2v_worker.config import Settings
from i2v_worker.worker.deadline import effective_deadline, job_execution_timeout_s


def settings(**kw) -> Settings:
    return Settings(model_dir=Path("/tmp/unused"), **kw)


def test_default_deadline_fits_runpods_default_execution_timeout():
    d = effective_deadline(Settings.from_env({}), {"id": "j", "input": {}})
    assert d.seconds < 600 and d.source == "I2V_JOB_DEADLINE_S"


def test_the_jobs_policy_caps_the_deadline_with_a_margin():
    d = effective_deadline(settings(job_deadline_s=1800), {"policy": {"executionTimeout": 600_000}})
    assert d.seconds == 585 and d.platform_limit_s == 600 and "policy.executionTimeout" in d.source


def test_a_larger_policy_keeps_the_workers_own_deadline():
    d = effective_deadline(settings(job_deadline_s=570), {"policy": {"executionTimeout": 1_900_000}})
    assert d.seconds == 570 and d.source == "I2V_JOB_DEADLINE_S" and d.platform_limit_s == 1900


def test_the_environment_caps_when_the_job_says_nothing():
    s = Settings.from_env({"I2V_JOB_DEADLINE_S": "1800", "I2V_EXECUTION_TIMEOUT_S": "900"})
    d = effective_deadline(s, {"id": "j", "input": {}})
    assert d.seconds == 885 and "I2V_EXECUTION_TIMEOUT_S" in d.source


def test_the_jobs_policy_wins_over_the_environment():
    s = settings(job_deadline_s=1800, execution_timeout_s=900)
    assert effective_deadline(s, {"policy": {"executionTimeout": 1_200_000}}).seconds == 1185


def test_short_limits_keep_a_tenth_as_margin():
    assert effective_deadline(settings(), {"policy": {"executionTimeout": 10_000}}).seconds == pytest.approx(9.0)


@pytest.mark.parametrize("policy", [None, {}, {"executionTimeout": 0}, {"executionTimeout": -5},
                                    {"executionTimeout": "600000"}, {"executionTimeout": True}, "x"])
def test_malformed_policies_are_ignored(policy):
    assert job_execution_timeout_s({"policy": policy}) is None
