"""The `dockmesh` command: one module per command group, rendering with rich."""
