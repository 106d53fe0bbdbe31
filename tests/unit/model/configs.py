"""Hypothesis strategies for the configuration values (dockmesh.model.config), shared by the
tests of the values themselves and of the labels that carry them."""

from __future__ import annotations

from hypothesis import strategies as st

from dockmesh.model.config import (
    ContainerConfig,
    EndpointConfig,
    HealthcheckConfig,
    IpamConfig,
    NetworkConfig,
    PortMapping,
)

text = st.text(min_size=1, max_size=12)


ipams = st.builds(
    IpamConfig,
    subnet=text,
    gateway=st.none() | text,
    ip_range=st.none() | text,
    aux_addresses=st.dictionaries(text, text, max_size=2),
)


networks = st.builds(
    NetworkConfig,
    name=text,
    driver=text,
    ipam=st.lists(ipams, max_size=2).map(tuple),
    internal=st.booleans(),
    attachable=st.booleans(),
    enable_ipv6=st.booleans(),
    options=st.dictionaries(text, text, max_size=2),
    labels=st.dictionaries(text, text, max_size=2),
)


argv = st.none() | st.lists(text, max_size=3).map(tuple)


containers = st.builds(
    ContainerConfig,
    name=text,
    image=text,
    command=argv,
    entrypoint=argv,
    environment=st.dictionaries(text, text, max_size=2),
    hostname=st.none() | text,
    networks=st.lists(
        st.builds(
            EndpointConfig,
            network=text,
            aliases=st.lists(text, max_size=2).map(tuple),
            ipv4_address=st.none() | text,
            ipv6_address=st.none() | text,
        ),
        max_size=2,
    ).map(tuple),
    network_mode=st.none() | st.sampled_from(["host", "none"]),
    ports=st.lists(
        st.builds(
            PortMapping,
            container_port=st.integers(1, 65535),
            protocol=st.sampled_from(["tcp", "udp"]),
            host_ip=st.none() | text,
            host_port=st.none() | st.integers(1, 65535),
        ),
        max_size=2,
    ).map(tuple),
    healthcheck=st.none()
    | st.builds(
        HealthcheckConfig,
        test=st.lists(text, min_size=1, max_size=3).map(tuple),
        interval_ns=st.integers(0, 2**63 - 1),
    ),
    labels=st.dictionaries(text, text, max_size=3),
)
