"""The data plane: the HTTP/1.1 load balancer that executes an IR."""
