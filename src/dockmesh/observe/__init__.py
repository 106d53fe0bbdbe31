"""Observing container networks from the host: interface counters, conntrack flows, the
network report and the agent's Prometheus collector. The pure parts (`counters`, `rates`,
`flows`, `report`) take values; the shells (`sample`, `conntrack`, `metrics`) read the
kernel."""
