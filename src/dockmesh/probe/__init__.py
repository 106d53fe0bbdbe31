"""Probes sent from inside containers' network namespaces, driven from the host: latency,
bandwidth, the doctor (and, from the policy work, reachability). Pure parts take gathered
values; the shells enter namespaces through `dockmesh.host.netns`."""
