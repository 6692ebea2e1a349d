"""Errors the SDK raises. The SDK stands alone, so this tree mirrors the gateway's codes, not its classes.

    RunError                        code
    ├── RunLocked                   run_locked            another live process holds the run's lease
    ├── RunCancelled                run_cancelled         ``wardgate runs cancel`` (or the store) stopped it
    ├── LeaseLost                   run_lease_lost        another process took the run over
    ├── NondeterministicRun         run_nondeterministic  the code calls a different step than recorded
    ├── ResultNotSerializable       step_result_not_json  a step result cannot be checkpointed as JSON
    ├── StepFailed                  step_failed           a recorded error whose class cannot be rebuilt
    ├── StoreUnavailable            store_unavailable     the checkpoint store cannot be reached
    └── GatewayRefused              (the gateway's code)  the gateway answered with its JSON error body
"""

from __future__ import annotations


class RunError(Exception):
    code = "run_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class RunLocked(RunError):
    code = "run_locked"


class RunCancelled(RunError):
    code = "run_cancelled"


class LeaseLost(RunError):
    code = "run_lease_lost"


class NondeterministicRun(RunError):
    code = "run_nondeterministic"


class ResultNotSerializable(RunError, TypeError):
    code = "step_result_not_json"


class StepFailed(RunError):
    """A step's recorded error whose original exception class could not be rebuilt on replay."""

    code = "step_failed"

    def __init__(self, message: str, *, error_type: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class StoreUnavailable(RunError):
    code = "store_unavailable"


class GatewayRefused(RunError):
    """The gateway refused a call (JSON error body); ``status`` and ``code`` are the gateway's."""

    def __init__(self, status: int, code: str, message: str, body: dict | None = None) -> None:
        super().__init__(f"gateway refused the call ({status} {code}): {message}", code=code)
        self.status = status
        self.body = body or {}
