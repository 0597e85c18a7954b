"""The admin server: health, metrics, the live IR, and the ALB OpenAPI for server groups."""
