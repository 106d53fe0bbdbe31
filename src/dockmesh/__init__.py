"""dockmesh: what plain Docker hosts lack — discovery, balancing, policy and network tooling."""

__version__ = "0.1.0"
