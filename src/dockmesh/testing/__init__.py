"""Test doubles that ship with dockmesh, as trio ships its `MockClock`: one of each, used by
dockmesh's own tests and by anyone who builds on dockmesh's pure core.

Nothing in dockmesh imports this package (an import-linter contract holds it); it imports
whatever it stands in for. Each module holds one kind of double: a clock, an event loop with
virtual time, transports that record what is written, an nft that keeps a table in memory, a
health probe that answers as scripted, an in-memory engine whose connection fails.
"""
