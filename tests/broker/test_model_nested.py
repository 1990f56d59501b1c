"""The lifecycle model of test_model.py with nested workflows (chains, groups and batches inside
each other). A module of its own so that under xdist it runs beside the first model test, not
after it: each takes a minute or more."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.broker.core import Broker
from tests.broker.conftest import Run
from tests.broker.test_model import NestedWorkflowMachine, _run_machine

pytestmark = pytest.mark.long


def test_nested_workflows_follow_the_lifecycle_model(
    broker: Broker, run: Run[Any], monkeypatch: pytest.MonkeyPatch, allow_inconsistency: None
) -> None:
    _run_machine(NestedWorkflowMachine, broker, run, monkeypatch)
