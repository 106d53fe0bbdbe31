"""DNS: answers prebuilt as wire bytes (`answer`, pure) and the UDP/TCP server that sends them."""
