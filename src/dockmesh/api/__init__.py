"""dockmesh's HTTP API: Consul's endpoints for what Consul clients call, the live topology
and Prometheus metrics. `make_app` builds the aiohttp application the agent serves."""

from dockmesh.api.app import TopologyProvider, TopologyWait, make_app
from dockmesh.api.metrics import Registry
from dockmesh.api.topology import TopologyFeed

__all__ = ["Registry", "TopologyFeed", "TopologyProvider", "TopologyWait", "make_app"]
