"""Readers and writers of the kernel's and the wire's formats: the text under
`/proc/<pid>/net/` (`procnet`), resolv.conf (`resolvconf`), ICMP echo packets (`icmp`).
Pure: text or bytes in, values out (or values in, bytes out). The adapters that read the
files and open the sockets live in `dockmesh.host`, `dockmesh.observe` and
`dockmesh.diagnose`."""
