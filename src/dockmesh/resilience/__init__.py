"""Resilience decisions as a library: balancers, a circuit breaker, passive outlier ejection
and a retry budget. Pure (no sockets, no clock of its own, no global randomness), so the same
objects serve a synchronous client, an asyncio server and the tests; time comes from the
`clock` callable given to each, randomness from the `random.Random` given."""

from dockmesh.resilience.balance import (
    Balancer,
    ConsistentHash,
    LeastRequest,
    PowerOfTwo,
    RoundRobin,
    SmoothWeighted,
    make_balancer,
)
from dockmesh.resilience.breaker import (
    BreakerOpen,
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
)
from dockmesh.resilience.outlier import OutlierDetector, OutlierPolicy
from dockmesh.resilience.retry import RetryBudget, after_failure, may_retry

__all__ = [
    "Balancer",
    "BreakerOpen",
    "BreakerPolicy",
    "BreakerState",
    "CircuitBreaker",
    "ConsistentHash",
    "LeastRequest",
    "OutlierDetector",
    "OutlierPolicy",
    "PowerOfTwo",
    "RetryBudget",
    "RoundRobin",
    "SmoothWeighted",
    "after_failure",
    "make_balancer",
    "may_retry",
]
