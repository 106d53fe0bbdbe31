"""The Docker Engine adapter: snapshot, event stream, apply."""
