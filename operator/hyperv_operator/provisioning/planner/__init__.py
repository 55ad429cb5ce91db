"""The pure planner: (spec, status, observation, now) -> Plan(action, new status, requeue, events).

No I/O here. `plan` walks the strategy's phase table (table.py) from `status.phase`: each phase
plan function looks at the observation and either reports its work done (the loop moves to the next
phase, emitting PhaseChanged), or returns one host action, or a wait. `plan_delete` does the same
for finalize(). `absorb` folds an action's output (a new VM's Id, the checkpoint's .avhdx) into
the status; `error_status` turns a host error into the status the handler writes.

By concern: work.py (the values every part shares), steps.py and copying.py (each phase's plan
function), table.py (the rows per strategy), provision.py (the loop), status.py (status and
conditions), deletion.py (finalize), results.py (action output and host errors).
"""

from hyperv_operator.provisioning.planner.deletion import plan_delete
from hyperv_operator.provisioning.planner.provision import plan
from hyperv_operator.provisioning.planner.results import absorb, error_status, is_not_found
from hyperv_operator.provisioning.planner.status import retryable_failure
from hyperv_operator.provisioning.planner.table import (
    PHASE_TABLES,
    copies_base,
    is_before,
    next_phase,
    phases,
    runs_on_checkpoint,
    step_of,
)
from hyperv_operator.provisioning.planner.work import (
    AFTER_ACTION,
    CLEANUP_RETRY,
    COPY_POLL,
    COPY_STALL_SECONDS,
    CRITICAL_POLL,
    DONE,
    HOST_ACCESS_CATEGORIES,
    MAX_COPY_RESTARTS,
    MERGE_POLL,
    MERGE_TIMEOUT,
    NEW_VM_CHECKPOINTED,
    OFF,
    PAUSED,
    POWER_POLL,
    RUNNING,
    SAVED_STATES,
    SHORT_WAIT,
    STOP_TIMEOUT,
    TRANSIENT_BACKOFF,
    Action,
    Plan,
    is_critical,
)

__all__ = [
    "AFTER_ACTION", "CLEANUP_RETRY", "COPY_POLL", "COPY_STALL_SECONDS", "CRITICAL_POLL", "DONE",
    "HOST_ACCESS_CATEGORIES", "MAX_COPY_RESTARTS", "MERGE_POLL", "MERGE_TIMEOUT", "NEW_VM_CHECKPOINTED", "OFF",
    "PAUSED",
    "PHASE_TABLES", "POWER_POLL", "RUNNING", "SAVED_STATES", "SHORT_WAIT", "STOP_TIMEOUT", "TRANSIENT_BACKOFF",
    "Action", "Plan", "absorb", "copies_base", "error_status", "is_before", "is_critical", "is_not_found",
    "next_phase", "phases", "plan", "plan_delete", "retryable_failure", "runs_on_checkpoint", "step_of",
]
