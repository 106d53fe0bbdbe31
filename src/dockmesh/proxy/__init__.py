"""`dockmesh proxy`: the data plane. A pure HTTP/1.1 head reader and editor (`http1`), the
routes file (`config`), and the uvloop server that carries the decisions of
`dockmesh.resilience` out on sockets (`server`)."""
