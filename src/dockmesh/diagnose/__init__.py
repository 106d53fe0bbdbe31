"""Diagnosing containers' networks from the host: the doctor (`doctor` gathers, `findings`
decides), latency and bandwidth between two containers, and the reachability sweep behind
`dockmesh matrix` and `why --probe` (`sweep`). What is measured is sent from inside the
containers' network namespaces, entered through `dockmesh.host.netns`; the pure parts take
gathered values."""
