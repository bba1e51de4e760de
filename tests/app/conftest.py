"""Fixtures the gateway's tests share."""

import pytest

from tests.app.gatewayparts import POLICY, SCENARIO


@pytest.fixture
def sim_and_env(stack, simulator, sqlite_url):
    def make(**scenario):
        sim = simulator(**SCENARIO, **scenario)
        stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
        return sim
    return make
