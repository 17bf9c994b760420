"""The policy gate of sandgate: the policy format, decisions, counters, approvals and audit.

`RedisCounterStore` and `RedisAuditSink` load on first use (they import the `redis` client,
which a server keeping its state in SQLite and its audit in a file never needs).
"""

from typing import TYPE_CHECKING, Any

from ._approvals import answer_approval
from ._audit import (
    AuditEntry,
    AuditLog,
    AuditRecord,
    AuditSink,
    read_audit,
    records,
)
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
    WouldWait,
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
    from ._audit_redis import RedisAuditSink
    from ._redis import RedisCounterStore
from ._open import open_audit_sink, open_counter_store
from ._rules import ConsoleSettings, Operator
from ._sqlite import SqliteCounterStore
from ._store import (
    AUDIT_FILE,
    ApprovalRecord,
    ApprovalStatus,
    CounterSpec,
    CounterStore,
    state_dir_default,
)

__all__ = [
    "AUDIT_FILE",
    "RESERVED_MOUNT_NAME",
    "Allowed",
    "ApprovalRecord",
    "ApprovalRefused",
    "ApprovalStatus",
    "AuditEntry",
    "AuditLog",
    "AuditRecord",
    "AuditSink",
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
    "RedisAuditSink",
    "RedisCounterStore",
    "SecretRule",
    "ServerMount",
    "ServerSettings",
    "SqliteCounterStore",
    "StateUnavailable",
    "ToolCall",
    "UnknownApproval",
    "WouldWait",
    "answer_approval",
    "default_policy_path",
    "engine_requirements",
    "explain_egress",
    "grant_share",
    "load_policy",
    "load_policy_text",
    "mount_name_problem",
    "open_audit_sink",
    "open_counter_store",
    "parse_destination",
    "policy_json_schema",
    "read_audit",
    "records",
    "shipped_policy_paths",
    "special_address",
    "state_dir_default",
]


def __getattr__(name: str) -> Any:
    if name == "RedisCounterStore":
        from ._redis import RedisCounterStore

        globals()[name] = RedisCounterStore
        return RedisCounterStore
    if name == "RedisAuditSink":
        from ._audit_redis import RedisAuditSink

        globals()[name] = RedisAuditSink
        return RedisAuditSink
    raise AttributeError(f"module 'policies' has no attribute {name!r}")
