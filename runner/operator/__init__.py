"""What operators use on a running server: the operator API the service hands out
(`OperatorApi`), the calls held for approval, the last hour's usage, audit queries and
policy explanations. The console (`runner/console/`) and the command line (`runner/cli/`)
are its clients.
"""

from ._api import OperatedService, OperatorApi, PolicyInfo, Pools
from ._audit_query import AuditQuery, parse_time, query_audit
from ._explain import Explanation, explain_call, program_of
from ._usage import Series, UsageWindow
from ._waiting import ApprovalRoom, PendingApproval

__all__ = [
    "ApprovalRoom",
    "AuditQuery",
    "Explanation",
    "OperatedService",
    "OperatorApi",
    "PendingApproval",
    "PolicyInfo",
    "Pools",
    "Series",
    "UsageWindow",
    "explain_call",
    "parse_time",
    "program_of",
    "query_audit",
]
