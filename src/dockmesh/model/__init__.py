"""Pure data: the live topology of one or more Docker engines, and IPAM maths."""
