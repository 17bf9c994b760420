"""The policy gate of sandgate: the policy format, decisions, counters, approvals and audit.

`RedisCounterStore` loads on first use (it imports the `redis` client, which a server keeping
its state in SQLite never needs).
"""

from typing import TYPE_CHECKING, Any

from ._approvals import answer_approval
from ._audit import AuditLog, AuditRecord, read_audit
from ._decisions import Allowed, Decision, Denied, NeedsApproval, Outcome, ToolCall
from ._egress import CompiledEgress, EgressRule, HostPattern, SecretRule, special_address
from ._egress_explain import explain_egress, parse_destination
from ._egress_quota import EgressTerms
from ._errors import (
    ApprovalRefused,
    AuditUnavailable,
    PolicyError,
    PolicyLoadError,
    Problem,
    StateUnavailable,
    UnknownApproval,
)
from ._gate import Gate
from ._loader import (
    default_policy_path,
    load_policy,
    load_policy_text,
    policy_json_schema,
    shipped_policy_paths,
)
from ._model import (
    RESERVED_MOUNT_NAME,
    EgressSettings,
    Policy,
    ServerMount,
    ServerSettings,
    engine_requirements,
    grant_share,
    mount_name_problem,
)

if TYPE_CHECKING:
    from ._redis import RedisCounterStore
from ._rules import ConsoleSettings, Operator
from ._sqlite import SqliteCounterStore
from ._store import (
    ApprovalRecord,
    ApprovalStatus,
    CounterSpec,
    CounterStore,
    open_counter_store,
    state_dir_default,
)

__all__ = [
    "RESERVED_MOUNT_NAME",
    "Allowed",
    "ApprovalRecord",
    "ApprovalRefused",
    "ApprovalStatus",
    "AuditLog",
    "AuditRecord",
    "AuditUnavailable",
    "CompiledEgress",
    "ConsoleSettings",
    "CounterSpec",
    "CounterStore",
    "Decision",
    "Denied",
    "EgressRule",
    "EgressSettings",
    "EgressTerms",
    "Gate",
    "HostPattern",
    "NeedsApproval",
    "Operator",
    "Outcome",
    "Policy",
    "PolicyError",
    "PolicyLoadError",
    "Problem",
    "RedisCounterStore",
    "SecretRule",
    "ServerMount",
    "ServerSettings",
    "SqliteCounterStore",
    "StateUnavailable",
    "ToolCall",
    "UnknownApproval",
    "answer_approval",
    "default_policy_path",
    "engine_requirements",
    "explain_egress",
    "grant_share",
    "load_policy",
    "load_policy_text",
    "mount_name_problem",
    "open_counter_store",
    "parse_destination",
    "policy_json_schema",
    "read_audit",
    "shipped_policy_paths",
    "special_address",
    "state_dir_default",
]


def __getattr__(name: str) -> Any:
    if name == "RedisCounterStore":
        from ._redis import RedisCounterStore

        globals()[name] = RedisCounterStore
        return RedisCounterStore
    raise AttributeError(f"module 'policies' has no attribute {name!r}")
