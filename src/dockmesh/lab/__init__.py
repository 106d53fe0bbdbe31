"""`dockmesh lab`: several Docker hosts on one machine, each engine in a network namespace of
its own, joined by a switch namespace, as a real swarm with etcd and an agent per host.

`plan` and `state` are pure (names, addresses, command lines, the state file's form);
`run` carries them out with processes.
"""
