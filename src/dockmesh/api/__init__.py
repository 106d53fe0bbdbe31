"""dockmesh's HTTP API: Consul's endpoints for what Consul clients call, the live topology
and Prometheus metrics."""
