"""`dockmesh proxy`: the data plane. Read from the bottom up (an import-linter contract holds
the layers):

- `http1`: HTTP/1.1 heads and body framing, sans-IO (bytes in, decisions and edited bytes out);
- `cluster` (upstreams, eligibility, the pool behind `Pooled`), `tally` (running counts) and
  `config` (the routes file); `settings` (timeouts, limits, routes);
- `exchange` (one connection's exchanges as a pure state machine: attempts, retries, keep-alive)
  and `routing` (which cluster, which hash key);
- `server` (the uvloop Protocols that carry those decisions out on sockets), `admin` (/status,
  /metrics, several workers summed) and `discovery` (the agent's catalog, active checks);
- `run`: the composition root.

The resilience decisions themselves (balancers, breakers, outlier ejection, the retry rule and
budget) are `dockmesh.resilience`'s."""
